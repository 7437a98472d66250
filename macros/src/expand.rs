//! Expansion of `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, LitStr};

use crate::attr::{self, EventAttrs};
use crate::name;

/// The impl, or the error and a stand-in impl: a type whose derive failed
/// still implements `Event`, so that the one error the user sees is the
/// one that says what is wrong, not a second "`Event` is not implemented"
/// at every use of the type.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let attrs = attr::parse(&input.attrs);
    let checked = attrs
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|attrs| topic(input, attrs).map(|topic| (attrs, topic)));
    match checked {
        Ok((attrs, topic)) => event_impl(input, attrs, &topic),
        Err(err) => {
            let mut out = err.into_compile_error();
            if !matches!(input.data, Data::Union(_)) {
                let attrs = attrs.unwrap_or_default();
                // Never compiled into a program: the error above stops the
                // build. The name is a valid topic so that nothing else fails.
                let stand_in = LitStr::new("invalid", input.ident.span());
                out.extend(event_impl(input, &attrs, &stand_in));
            }
            out
        }
    }
}

/// The topic, checked against the grammar.
fn topic(input: &DeriveInput, attrs: &EventAttrs) -> syn::Result<LitStr> {
    if let Data::Union(u) = &input.data {
        return Err(syn::Error::new(
            u.union_token.span,
            "`Event` cannot be derived for a union: use a struct or an enum",
        ));
    }
    match &attrs.topic {
        Some(lit) => {
            let value = lit.value();
            tidings_grammar::check(&value)
                .map_err(|v| syn::Error::new(lit.span(), v.describe(&value)))?;
            Ok(lit.clone())
        }
        None => {
            let derived = name::snake_case(&input.ident.to_string());
            tidings_grammar::check(&derived).map_err(|v| {
                syn::Error::new(
                    input.ident.span(),
                    format!(
                        "the topic derived from the type name is not valid ({}); name it with #[event(topic = \"...\")]",
                        v.describe(&derived)
                    ),
                )
            })?;
            Ok(LitStr::new(&derived, input.ident.span()))
        }
    }
}

fn event_impl(input: &DeriveInput, attrs: &EventAttrs, topic: &LitStr) -> TokenStream {
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
    quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {
            const TOPIC: &'static str = #topic;
            #codec
        }
    }
}
