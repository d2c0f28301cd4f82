//! The agent's `/metrics` as the tests read it: one scrape over HTTP from inside the
//! lab's router namespace, and one sample's value from the OpenMetrics text.

use std::io::{Read, Write};

use crate::lab::{Lab, Ns};

/// The whole HTTP response (status line, headers, body) of `GET /metrics` from the
/// agent's metrics listener on 127.0.0.1:`port` in the router namespace; it must be a 200.
pub fn scrape(lab: &Lab, port: u16) -> String {
    lab.in_netns(Ns::Router, || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    })
    .unwrap()
}

/// The sum of the samples `name{labels} value` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .expect("a number")
        })
        .sum()
}
