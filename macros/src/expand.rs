//! Expansion of `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, LitStr};

use crate::{attr, valid};

pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    if let Data::Union(u) = &input.data {
        return Err(syn::Error::new(
            u.union_token.span,
            "`Event` cannot be derived for a union: use a struct or an enum",
        ));
    }
    let attrs = attr::parse(&input.attrs)?;
    let topic = match &attrs.topic {
        Some(lit) => {
            valid::check_topic(&lit.value()).map_err(|msg| syn::Error::new(lit.span(), msg))?;
            lit.clone()
        }
        None => {
            let name = valid::snake_case(&input.ident.to_string());
            valid::check_topic(&name).map_err(|msg| {
                syn::Error::new(
                    input.ident.span(),
                    format!(
                        "the topic derived from the type name is not valid ({msg}); name it with #[event(topic = \"...\")]"
                    ),
                )
            })?;
            LitStr::new(&name, input.ident.span())
        }
    };
    let krate = match &attrs.krate {
        Some(path) => quote!(#path),
        None => quote!(::tidings),
    };
    let ident = &input.ident;
    let codec = attrs.serde.then(|| {
        quote! {
            fn __codec() -> ::core::option::Option<#krate::Codec> {
                ::core::option::Option::Some(#krate::Codec::of::<Self>())
            }
        }
    });
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {
            const TOPIC: &'static str = #topic;
            #codec
        }
    })
}
