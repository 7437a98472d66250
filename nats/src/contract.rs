//! What a bridge puts in the bus's AsyncAPI document (feature `asyncapi`):
//! its servers, and the subject each bridged topic travels on.

use tidings::asyncapi::AsyncApi;

use crate::Bridge;

/// The servers and topics a bridge was started with.
#[derive(Debug)]
pub(crate) struct Contract {
    pub(crate) servers: Vec<String>,
    pub(crate) topics: Vec<&'static str>,
}

/// `nats://host:port`, `tls://host:port`, `host:port` or `host` as AsyncAPI
/// wants it: the host with its port (4222 when none is given).
fn host(server: &str) -> String {
    let bare = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .trim_end_matches('/');
    let bare = bare.rsplit_once('@').map_or(bare, |(_, host)| host);
    if bare
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        bare.to_owned()
    } else {
        format!("{bare}:4222")
    }
}

impl Bridge {
    /// Adds this bridge to `doc`: its NATS servers (`nats`, then `nats-2`,
    /// … for the ones tried in turn) and, for every topic it exports or
    /// imports, the subject the topic travels on as its channel's address.
    ///
    /// ```no_run
    /// # async fn f(bus: tidings::Bus, bridge: tidings_nats::Bridge) {
    /// let doc = bridge.asyncapi(tidings::asyncapi::AsyncApi::new(&bus).title("billing"));
    /// println!("{}", doc.to_string_pretty());
    /// # }
    /// ```
    pub fn asyncapi(&self, mut doc: AsyncApi) -> AsyncApi {
        let names: Vec<String> = (1..=self.contract.servers.len())
            .map(|i| {
                if i == 1 {
                    "nats".to_owned()
                } else {
                    format!("nats-{i}")
                }
            })
            .collect();
        for (name, server) in names.iter().zip(&self.contract.servers) {
            doc = doc.server(name.clone(), host(server), "nats");
        }
        for topic in &self.contract.topics {
            let subject = self.ctx.subject(topic);
            // The bridge's own topics are not in the document; every other
            // topic it carries is on the bus's allow-list, hence in it.
            if let Ok(with) = doc.clone().address(topic, subject, "nats") {
                doc = with;
            }
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts() {
        assert_eq!(super::host("nats://127.0.0.1:4333"), "127.0.0.1:4333");
        assert_eq!(
            super::host("tls://user:pw@nats.internal"),
            "nats.internal:4222"
        );
        assert_eq!(super::host("nats.internal"), "nats.internal:4222");
    }
}
