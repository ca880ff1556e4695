//! `NATS_URL` as a server list: one URL for a single server, or a comma-separated list for a
//! JetStream cluster (`nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222`). The
//! client connects to one of them and, when that node goes away, reconnects to another; it
//! also learns the cluster's other members from the server it is connected to.

/// The servers of a `NATS_URL`: each comma-separated entry, trimmed, empty ones left out.
pub fn list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_server() {
        assert_eq!(list("nats://127.0.0.1:4222"), ["nats://127.0.0.1:4222"]);
    }

    #[test]
    fn a_comma_list_is_every_server_in_order() {
        assert_eq!(
            list(" nats://a:4222, nats://b:4222 ,,nats://c:4222,"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
    }
}
