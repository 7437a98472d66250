//! The live view of a small shop's bus: open the address it prints.
//!
//! ```text
//! cargo run --release -p tidings-demos --example live_view
//! cargo run --release -p tidings-demos --example live_view -- --seconds 30 --port 9898
//! ```

use std::time::Duration;

use tidings::asyncapi::AsyncApi;
use tidings::view::ViewBuilder;
use tidings_demos::shop::{shop, OrderPlaced};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut shop = shop()?;
    let port = arg("--port").unwrap_or(9898);
    let seconds = arg("--seconds");
    let doc = AsyncApi::new(&shop.bus)
        .title("shop")
        .version("1.0.0")
        .schema::<OrderPlaced>()?;
    let view = ViewBuilder::new(&shop.bus)
        .asyncapi(doc)
        .serve(("127.0.0.1", u16::try_from(port)?))
        .await?;
    println!("the shop's bus, live: http://{}/", view.local_addr());
    println!(
        "its allow-list as AsyncAPI: http://{}/asyncapi.json",
        view.local_addr()
    );
    let stop = async move {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    shop.run(200, stop).await;
    drop(view);
    let report = shop.shutdown(Duration::from_secs(5)).await;
    println!("{report}");
    Ok(())
}
