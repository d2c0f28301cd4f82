//! Prometheus metrics: the exposition of one [`Snapshot`] and its HTTP endpoint (hyper).
//!
//! The text is OpenMetrics 1.0 as prometheus-client writes it (`_total` samples, `# EOF`)
//! and is served with the OpenMetrics content type, which Prometheus parses as such.
//! Values are gathered by the agent per scrape, so nothing here holds state between
//! scrapes: a [`Collector`] writes the snapshot straight into the encoder.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Result, bail};
use filter_common::{ActionStat, Counter, Family, Reason};

use crate::{
    subscribers::accounting::Outcome,
    web_config::{Access, WebConfig},
};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, error, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};

/// Everything a scrape reports, gathered by the agent at scrape time.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// (interface, family, reason, counter)
    pub interfaces: Vec<(String, Family, Reason, Counter)>,
    /// (group name, reason, counter)
    pub groups: Vec<(String, Reason, Counter)>,
    /// (map name, entries, capacity)
    pub maps: Vec<(String, u64, u64)>,
    pub exemptions: u64,
    /// RADIUS accounting requests by outcome.
    pub radius_requests: Vec<(Outcome, u64)>,
    /// Subscriber sessions known (hooks and RADIUS).
    pub sessions: u64,
    pub policy_generation: u64,
    pub last_reload_success: bool,
    pub last_reload_time: SystemTime,
    pub attached_interfaces: Vec<AttachedMetric>,
    pub actions: Actions,
    /// Sources whose offender alert window is running.
    pub offenders_over_threshold: u64,
    /// Changes applied with --confirm-within that the agent rolled back by itself.
    pub automatic_rollbacks: u64,
    /// Fetches of the policy URL by outcome; empty for a policy file.
    pub policy_fetches: Vec<(crate::source::Outcome, u64)>,
}

/// What the program did besides passing and dropping, from ACTION_STATS.
/// An interface the filter is attached to, as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedMetric {
    pub interface: String,
    /// The XDP mode really in use: `native` or `generic`.
    pub mode: String,
    /// `exclusive` or `multiprog`.
    pub attach: String,
    pub program_id: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Actions {
    pub resets_sent: u64,
    pub events_sent: u64,
    pub events_suppressed: u64,
    pub events_lost: u64,
    pub offender_alerts: u64,
}

impl Actions {
    /// From the totals `Dataplane::action_stats` returns.
    pub fn from_stats(stats: &[u64; ActionStat::ALL.len()]) -> Actions {
        Actions {
            resets_sent: stats[ActionStat::ResetsSent as usize],
            events_sent: stats[ActionStat::EventsSent as usize],
            events_suppressed: stats[ActionStat::EventsSuppressed as usize],
            events_lost: stats[ActionStat::EventsLost as usize],
            offender_alerts: stats[ActionStat::OffenderAlerts as usize],
        }
    }

    /// The count of one action.
    pub fn count(&self, stat: ActionStat) -> u64 {
        match stat {
            ActionStat::ResetsSent => self.resets_sent,
            ActionStat::EventsSent => self.events_sent,
            ActionStat::EventsSuppressed => self.events_suppressed,
            ActionStat::EventsLost => self.events_lost,
            ActionStat::OffenderAlerts => self.offender_alerts,
        }
    }
}

// `SystemTime` has no `Default`; the epoch renders as timestamp 0, "never".
impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            interfaces: Vec::new(),
            groups: Vec::new(),
            maps: Vec::new(),
            exemptions: 0,
            radius_requests: Outcome::ALL.iter().map(|&o| (o, 0)).collect(),
            sessions: 0,
            policy_generation: 0,
            last_reload_success: false,
            last_reload_time: SystemTime::UNIX_EPOCH,
            attached_interfaces: Vec::new(),
            actions: Actions::default(),
            offenders_over_threshold: 0,
            automatic_rollbacks: 0,
            policy_fetches: Vec::new(),
        }
    }
}

const PREFIX: &str = "filter_agent";

/// Renders the snapshot as OpenMetrics text, ending with `# EOF`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut text = String::new();
    // Writing into a String cannot fail, and every value here encodes.
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding metrics into a String");
    text
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;

        gauges(
            &mut encoder,
            "build_info",
            None,
            "Always 1; the agent's version in a label, to tell which routers run which build.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;

        let interfaces = summed(s.interfaces.iter().map(|(interface, family, reason, c)| {
            (
                [
                    ("interface", interface.as_str()),
                    ("family", family.name()),
                    ("reason", reason.name()),
                ],
                *c,
            )
        }));
        counters(
            &mut encoder,
            "packets",
            None,
            "Frames seen by the XDP filter, by interface, address family and verdict reason.",
            interfaces
                .iter()
                .map(|(labels, c)| (&labels[..], c.packets)),
        )?;
        counters(
            &mut encoder,
            "bytes",
            Some(Unit::Bytes),
            "Bytes of the frames seen by the XDP filter, by interface, address family and verdict reason.",
            interfaces.iter().map(|(labels, c)| (&labels[..], c.bytes)),
        )?;

        let groups = summed(s.groups.iter().map(|(group, reason, c)| {
            ([("group", group.as_str()), ("reason", reason.name())], *c)
        }));
        counters(
            &mut encoder,
            "group_packets",
            None,
            "Frames from the source prefixes of a policy group, by verdict reason.",
            groups.iter().map(|(labels, c)| (&labels[..], c.packets)),
        )?;
        counters(
            &mut encoder,
            "group_bytes",
            Some(Unit::Bytes),
            "Bytes of the frames from the source prefixes of a policy group, by verdict reason.",
            groups.iter().map(|(labels, c)| (&labels[..], c.bytes)),
        )?;

        gauges(
            &mut encoder,
            "map_entries",
            None,
            "Entries in a BPF map.",
            s.maps
                .iter()
                .map(|(map, entries, _)| ([("map", map.as_str())], *entries)),
        )?;
        gauges(
            &mut encoder,
            "map_capacity",
            None,
            "Maximum entries of a BPF map.",
            s.maps
                .iter()
                .map(|(map, _, capacity)| ([("map", map.as_str())], *capacity)),
        )?;
        gauges(
            &mut encoder,
            "exemptions",
            None,
            "Exemptions granted from the command line (filter-agent exemptions add).",
            [([] as [(&str, &str); 0], s.exemptions)],
        )?;
        counters(
            &mut encoder,
            "radius_requests",
            None,
            "RADIUS accounting requests received, by outcome: applied, duplicate (answered again, not applied), or dropped (unknown-client, truncated, malformed, unsupported, bad-authenticator, invalid, failed).",
            s.radius_requests
                .iter()
                .map(|(outcome, n)| ([("outcome", outcome.name())], *n)),
        )?;
        gauges(
            &mut encoder,
            "sessions",
            None,
            "Subscriber sessions known to the agent (hooks and RADIUS accounting).",
            [([] as [(&str, &str); 0], s.sessions)],
        )?;
        gauges(
            &mut encoder,
            "policy_generation",
            None,
            "Number of the policy in force; goes up with every applied reload.",
            [([] as [(&str, &str); 0], s.policy_generation)],
        )?;
        gauges(
            &mut encoder,
            "last_reload_success",
            None,
            "1 if the last policy reload was applied, 0 if it was refused (the previous policy stays in force).",
            [([] as [(&str, &str); 0], u64::from(s.last_reload_success))],
        )?;
        let reload_time = s
            .last_reload_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        gauges(
            &mut encoder,
            "last_reload_timestamp_seconds",
            Some(Unit::Seconds),
            "Unix time of the last policy reload attempt, applied or refused.",
            [([] as [(&str, &str); 0], reload_time)],
        )?;
        counters(
            &mut encoder,
            "policy_fetch",
            None,
            "Fetches of the signed policy URL (run --policy-url), by outcome: applied, unchanged, not-modified, or refused (bad-signature, invalid, http-error, unreachable) with the policy in force untouched.",
            s.policy_fetches
                .iter()
                .map(|(outcome, n)| ([("outcome", outcome.name())], *n)),
        )?;
        counters(
            &mut encoder,
            "automatic_rollbacks",
            None,
            "Changes applied with --confirm-within and not confirmed in time, which the agent rolled back by itself.",
            [([] as [(&str, &str); 0], s.automatic_rollbacks)],
        )?;

        let none = || [] as [(&str, &str); 0];
        counters(
            &mut encoder,
            "resets_sent",
            None,
            "TCP RST+ACK replies sent to blocked connection attempts (action: reject).",
            [(none(), s.actions.resets_sent)],
        )?;
        counters(
            &mut encoder,
            "events",
            None,
            "Drop and offender events: sent to the agent, suppressed by the events.per_second limit, or lost because the ring buffer was full.",
            [
                ([("outcome", "sent")], s.actions.events_sent),
                ([("outcome", "suppressed")], s.actions.events_suppressed),
                ([("outcome", "lost")], s.actions.events_lost),
            ],
        )?;
        counters(
            &mut encoder,
            "offender_alerts",
            None,
            "Offender alerts raised: a source reached offenders.alert_after blocked attempts in one window.",
            [(none(), s.actions.offender_alerts)],
        )?;
        gauges(
            &mut encoder,
            "offenders_over_threshold",
            None,
            "Sources that raised an offender alert and whose alert window has not ended.",
            [(none(), s.offenders_over_threshold)],
        )?;

        gauges(
            &mut encoder,
            "attached",
            None,
            "1 for each interface the filter is attached to, with its XDP mode and program id.",
            s.attached_interfaces.iter().map(|a| {
                (
                    [
                        ("interface", a.interface.clone()),
                        ("mode", a.mode.clone()),
                        ("program_id", a.program_id.to_string()),
                    ],
                    1u64,
                )
            }),
        )?;

        gauges(
            &mut encoder,
            "attached_info",
            None,
            "1 for each interface the filter is attached to: the XDP mode it really got (generic after a fallback from native) and how it shares the hook (exclusive or multiprog).",
            s.attached_interfaces.iter().map(|a| {
                (
                    [
                        ("interface", a.interface.clone()),
                        ("mode", a.mode.clone()),
                        ("attach", a.attach.clone()),
                    ],
                    1u64,
                )
            }),
        )
    }
}

/// Sums counters under the same labels: a repeated label set would make Prometheus
/// refuse the whole scrape. Sorting by labels also keeps the output stable.
fn summed<L: Ord>(rows: impl Iterator<Item = (L, Counter)>) -> BTreeMap<L, Counter> {
    let mut sums = BTreeMap::<L, Counter>::new();
    for (labels, c) in rows {
        let sum = sums.entry(labels).or_default();
        sum.packets += c.packets;
        sum.bytes += c.bytes;
    }
    sums
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<Unit>,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        unit,
        help,
        samples,
        ConstCounter::new,
        MetricType::Counter,
    )
}

fn gauges<L: EncodeLabelSet, N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<Unit>,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    family(
        encoder,
        name,
        unit,
        help,
        samples,
        ConstGauge::new,
        MetricType::Gauge,
    )
}

/// One metric family: its `# HELP`, `# TYPE` (and `# UNIT`) lines, then one sample per
/// label set. `name` is the name without prefix, ending in the unit if there is one.
fn family<L: EncodeLabelSet, N, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<Unit>,
    help: &str,
    samples: impl IntoIterator<Item = (L, N)>,
    metric: impl Fn(N) -> M,
    metric_type: MetricType,
) -> Result<(), std::fmt::Error> {
    let full_name = format!("{PREFIX}_{name}");
    // The crate appends the unit itself.
    let base = match &unit {
        Some(unit) => full_name
            .strip_suffix(&format!("_{}", unit.as_str()))
            .expect("a metric name ends in its unit"),
        None => &full_name,
    };
    let mut family = encoder.encode_descriptor(base, help, unit.as_ref(), metric_type)?;
    for (labels, value) in samples {
        metric(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// OpenMetrics, since that is what [`render`] writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest request head accepted (hyper's smallest read buffer): a scrape request is a
/// few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client gets to send its request head.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives: the request head, then gathering and taking the response.
/// A client that never reads its response must not hold a task forever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper closes a connection whose request head is late without a word; the client is
/// told why, as before.
const LATE_HEAD: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
    Content-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\nConnection: close\r\n\r\n\
    request timeout\n";

/// Gathers a [`Snapshot`]; called once per scrape.
pub type SnapshotFn = dyn Fn() -> Result<Snapshot> + Send + Sync;

/// HTTP/1.1 server (hyper): `GET /metrics` is the exposition, `GET /` a pointer to it,
/// anything else 404 (405 for methods other than GET and HEAD). One request per
/// connection. Runs until the task is dropped; a failing connection or scrape is logged
/// and never stops the server.
///
/// `web` adds TLS and basic auth (`--web-config`); with auth, every path needs it.
pub async fn serve(listener: TcpListener, snapshot: Arc<SnapshotFn>, web: Arc<WebConfig>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (snapshot, web) = (snapshot.clone(), web.clone());
                tokio::spawn(async move {
                    let served = match &web.tls {
                        None => connection(stream, snapshot, web.clone()).await,
                        Some(tls) => {
                            match tokio::time::timeout(IO_TIMEOUT, tls.accept(stream)).await {
                                Ok(Ok(stream)) => connection(stream, snapshot, web.clone()).await,
                                Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake: {e}")),
                                Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                            }
                        }
                    };
                    if let Err(e) = served {
                        debug!("metrics: connection from {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    snapshot: Arc<SnapshotFn>,
    web: Arc<WebConfig>,
) -> Result<()> {
    let service = service_fn(move |request| {
        let (snapshot, web) = (snapshot.clone(), web.clone());
        async move { Ok::<_, Infallible>(respond(&request, snapshot, web).await) }
    });
    // hyper borrows the stream, so that it is still ours to answer a late request head.
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        // A client may shut down its sending side once the request is out (`nc -N`).
        .half_close(true)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(&mut stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
        Err(_) => bail!(
            "not done within {}",
            humantime::format_duration(CONNECTION_TIMEOUT)
        ),
        Ok(Err(e)) if e.is_timeout() => {
            tokio::time::timeout(IO_TIMEOUT, async {
                stream.write_all(LATE_HEAD).await?;
                stream.shutdown().await
            })
            .await??;
            Ok(())
        }
        Ok(result) => Ok(result?),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

async fn respond(
    request: &Request<Incoming>,
    snapshot: Arc<SnapshotFn>,
    web: Arc<WebConfig>,
) -> Response<Full<Bytes>> {
    // Origin form (`/metrics?...`) only, as a scraper sends it.
    let uri = request.uri();
    if uri.authority().is_some() || !uri.path().starts_with('/') {
        return text(StatusCode::BAD_REQUEST, "bad request");
    }
    if web.requires_auth() {
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        // bcrypt takes milliseconds of CPU: off the agent's runtime.
        let access = tokio::task::spawn_blocking(move || web.check(authorization.as_deref())).await;
        if !matches!(access, Ok(Access::Allowed)) {
            let mut denied = text(StatusCode::UNAUTHORIZED, "unauthorized");
            denied.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"filter-agent\""),
            );
            return denied;
        }
    }
    let (method, path) = (request.method(), uri.path());
    if path != "/" && path != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found; metrics are at /metrics");
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    if path == "/" {
        return response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><head><title>filter-agent</title></head><body>\
             <h1>filter-agent</h1><p><a href=\"/metrics\">Metrics</a></p>\
             </body></html>\n"
                .to_string(),
        );
    }
    // Gathering reads every counter map with syscalls: keep it off the agent's
    // single-threaded runtime, which also handles reloads and signals.
    match tokio::task::spawn_blocking(move || snapshot().map(|s| render(&s))).await {
        Ok(Ok(body)) => response(StatusCode::OK, OPENMETRICS, body),
        Ok(Err(e)) => {
            error!("metrics: gathering the snapshot: {e:#}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gathering metrics failed",
            )
        }
        Err(e) => {
            error!("metrics: gathering the snapshot: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gathering metrics failed",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        io::{Read, Write},
        net::SocketAddr,
        path::Path,
        time::Instant,
    };

    use super::*;

    fn counter(packets: u64, bytes: u64) -> Counter {
        Counter { packets, bytes }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            interfaces: vec![
                (
                    "eth1".into(),
                    Family::Ipv4,
                    Reason::Blocked,
                    counter(3, 180),
                ),
                ("eth1".into(), Family::Ipv6, Reason::Relay, counter(2, 150)),
                ("eth1".into(), Family::Ipv4, Reason::Port, counter(10, 6400)),
                (
                    "eth1".into(),
                    Family::Ipv4,
                    Reason::RateLimited,
                    counter(5, 300),
                ),
            ],
            groups: vec![
                ("residential".into(), Reason::Blocked, counter(3, 180)),
                // Names come from the policy file; quotes and backslashes must be escaped.
                ("odd \"name\" \\".into(), Reason::Exempt, counter(1, 60)),
            ],
            maps: vec![("SOURCES_V4".into(), 12, 1024)],
            exemptions: 2,
            radius_requests: vec![(Outcome::Applied, 3), (Outcome::BadAuthenticator, 1)],
            sessions: 2,
            policy_generation: 7,
            last_reload_success: true,
            last_reload_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
            attached_interfaces: vec![AttachedMetric {
                interface: "eth1".into(),
                mode: "native".into(),
                attach: "exclusive".into(),
                program_id: 42,
            }],
            actions: Actions {
                resets_sent: 4,
                events_sent: 9,
                events_suppressed: 41,
                events_lost: 1,
                offender_alerts: 2,
            },
            offenders_over_threshold: 1,
            automatic_rollbacks: 1,
            policy_fetches: vec![
                (crate::source::Outcome::NotModified, 12),
                (crate::source::Outcome::BadSignature, 2),
            ],
        }
    }

    /// One sample line: `name{key="value",...} value`.
    #[derive(Debug, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn parse_sample(line: &str) -> Sample {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let Some((name, rest)) = series.split_once('{') else {
            return Sample {
                name: series.to_string(),
                labels: Vec::new(),
                value,
            };
        };
        let mut labels = Vec::new();
        let mut rest = rest.strip_suffix('}').expect("closing brace");
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("key=\"");
            let mut chars = after.char_indices();
            let mut label = String::new();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().expect("escaped char").1 {
                        'n' => label.push('\n'),
                        c => label.push(c),
                    },
                    (_, c) => label.push(c),
                }
            };
            labels.push((key.to_string(), label));
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    /// Checks the exposition's structure and returns its samples.
    fn parse(text: &str) -> Vec<Sample> {
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        let mut types = HashMap::new();
        let mut helped = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| *l != "# EOF") {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let (name, text) = help.split_once(' ').unwrap();
                assert!(!text.is_empty(), "{line}");
                helped.push(name.to_string());
            } else if let Some(ty) = line.strip_prefix("# TYPE ") {
                let (name, ty) = ty.split_once(' ').unwrap();
                assert_eq!(
                    helped.last().map(String::as_str),
                    Some(name),
                    "HELP before TYPE"
                );
                types.insert(name.to_string(), ty.to_string());
            } else if line.starts_with("# UNIT ") {
            } else {
                let sample = parse_sample(line);
                let family = match sample.name.strip_suffix("_total") {
                    Some(family) if types.get(family).is_some_and(|t| t == "counter") => family,
                    _ => &sample.name,
                };
                assert!(types.contains_key(family), "no TYPE for {line}");
                assert!(sample.name.starts_with("filter_agent_"), "{line}");
                samples.push(sample);
            }
        }
        samples
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_every_metric() {
        let text = render(&snapshot());
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# HELP filter_agent_packets Frames seen by the XDP filter, by interface, address family and verdict reason.",
            "# TYPE filter_agent_packets counter",
            r#"filter_agent_packets_total{interface="eth1",family="ipv4",reason="blocked"} 3"#,
            "# TYPE filter_agent_bytes counter",
            "# UNIT filter_agent_bytes bytes",
            r#"filter_agent_bytes_total{interface="eth1",family="ipv4",reason="port"} 6400"#,
            r#"filter_agent_group_packets_total{group="residential",reason="blocked"} 3"#,
            r#"filter_agent_group_bytes_total{group="odd \"name\" \\",reason="exempt"} 60"#,
            "# TYPE filter_agent_map_entries gauge",
            r#"filter_agent_map_entries{map="SOURCES_V4"} 12"#,
            r#"filter_agent_map_capacity{map="SOURCES_V4"} 1024"#,
            "filter_agent_exemptions 2",
            "# TYPE filter_agent_radius_requests counter",
            r#"filter_agent_radius_requests_total{outcome="applied"} 3"#,
            r#"filter_agent_radius_requests_total{outcome="bad-authenticator"} 1"#,
            "# TYPE filter_agent_sessions gauge",
            "filter_agent_sessions 2",
            "# TYPE filter_agent_policy_generation gauge",
            "filter_agent_policy_generation 7",
            "filter_agent_last_reload_success 1",
            "# UNIT filter_agent_last_reload_timestamp_seconds seconds",
            "filter_agent_last_reload_timestamp_seconds 1700000000.5",
            "# TYPE filter_agent_policy_fetch counter",
            r#"filter_agent_policy_fetch_total{outcome="not-modified"} 12"#,
            r#"filter_agent_policy_fetch_total{outcome="bad-signature"} 2"#,
            "# TYPE filter_agent_automatic_rollbacks counter",
            "filter_agent_automatic_rollbacks_total 1",
            "# HELP filter_agent_attached 1 for each interface the filter is attached to, with its XDP mode and program id.",
            r#"filter_agent_attached{interface="eth1",mode="native",program_id="42"} 1"#,
            "# HELP filter_agent_attached_info 1 for each interface the filter is attached to: the XDP mode it really got (generic after a fallback from native) and how it shares the hook (exclusive or multiprog).",
            r#"filter_agent_attached_info{interface="eth1",mode="native",attach="exclusive"} 1"#,
            "# TYPE filter_agent_resets_sent counter",
            "filter_agent_resets_sent_total 4",
            "# TYPE filter_agent_events counter",
            r#"filter_agent_events_total{outcome="sent"} 9"#,
            r#"filter_agent_events_total{outcome="suppressed"} 41"#,
            r#"filter_agent_events_total{outcome="lost"} 1"#,
            "filter_agent_offender_alerts_total 2",
            "# TYPE filter_agent_offenders_over_threshold gauge",
            "filter_agent_offenders_over_threshold 1",
            r#"filter_agent_packets_total{interface="eth1",family="ipv4",reason="rate-limited"} 5"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }

        let build_info = format!(
            "filter_agent_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(lines.contains(&build_info.as_str()), "{text}");

        let samples = parse(&text);
        assert_eq!(
            samples.len(),
            // The first 1: build_info; the last 1 and 2: attached_info and two policy fetches.
            1 + 4 * 2 + 2 * 2 + 2 + 4 + 7 + 1 + 2 + 1 + 1 + 2,
            "{text}"
        );
        let group = samples
            .iter()
            .find(|s| s.name == "filter_agent_group_bytes_total" && s.value == 60.0)
            .unwrap();
        assert_eq!(
            group.labels,
            labels(&[("group", "odd \"name\" \\"), ("reason", "exempt")])
        );
    }

    #[test]
    fn repeated_labels_are_summed_and_output_is_sorted() {
        let mut s = snapshot();
        s.interfaces
            .push(("eth1".into(), Family::Ipv4, Reason::Blocked, counter(1, 60)));
        let samples = parse(&render(&s));
        let packets: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "filter_agent_packets_total")
            .collect();
        assert_eq!(packets.len(), 4);
        assert_eq!(
            packets[0].labels,
            labels(&[
                ("interface", "eth1"),
                ("family", "ipv4"),
                ("reason", "blocked")
            ])
        );
        assert_eq!(packets[0].value, 4.0);
        assert_eq!(packets[1].labels[2].1, "port");
        assert_eq!(packets[2].labels[2].1, "rate-limited");
        assert_eq!(packets[3].labels[1].1, "ipv6");
    }

    #[test]
    fn empty_snapshot_still_describes_every_family() {
        let text = render(&Snapshot::default());
        let samples = parse(&text);
        assert_eq!(text.matches("# TYPE ").count(), 21, "{text}");
        let names: Vec<_> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "filter_agent_build_info");
        assert_eq!(samples[0].value, 1.0);
        let (names, samples) = (&names[1..], &samples[1..]);
        let mut expected = vec!["filter_agent_exemptions"];
        // Every outcome, so a rate() over it never starts from a missing series.
        expected.extend(["filter_agent_radius_requests_total"; 9]);
        expected.push("filter_agent_sessions");
        assert_eq!(names[..11], expected[..]);
        assert_eq!(
            names[11..],
            [
                "filter_agent_policy_generation",
                "filter_agent_last_reload_success",
                "filter_agent_last_reload_timestamp_seconds",
                "filter_agent_automatic_rollbacks_total",
                "filter_agent_resets_sent_total",
                "filter_agent_events_total",
                "filter_agent_events_total",
                "filter_agent_events_total",
                "filter_agent_offender_alerts_total",
                "filter_agent_offenders_over_threshold",
            ]
        );
        assert!(samples.iter().all(|s| s.value == 0.0));
    }

    /// Serves `snapshot` from a runtime of its own, as the agent will, so the blocking
    /// std clients below play the scraper.
    fn start(snapshot: Arc<SnapshotFn>) -> SocketAddr {
        start_with(snapshot, WebConfig::default())
    }

    fn start_with(snapshot: Arc<SnapshotFn>, web: WebConfig) -> SocketAddr {
        let web = Arc::new(web);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    serve(TcpListener::from_std(listener).unwrap(), snapshot, web).await
                })
        });
        addr
    }

    fn fixed() -> Arc<SnapshotFn> {
        Arc::new(|| Ok(snapshot()))
    }

    /// Sends raw bytes; returns the status line, the headers and the body.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let length = format!("Content-Length: {}", body.len());
        if !request.starts_with(b"HEAD ") {
            assert!(headers.contains(&length), "{headers}");
        }
        (status.to_string(), headers.to_string(), body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes(),
        )
    }

    #[test]
    fn serves_metrics_and_survives_bad_requests() {
        let addr = start(fixed());

        let (status, headers, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
        );
        assert_eq!(body, render(&snapshot()));
        assert!(
            parse(&body)
                .iter()
                .any(|s| s.name == "filter_agent_exemptions" && s.value == 2.0)
        );

        let (status, _, body) = get(addr, "/metrics?debug=1");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.ends_with("# EOF\n"));

        let (status, headers, body) = get(addr, "/");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("text/html"));
        assert!(body.contains("href=\"/metrics\""));

        assert_eq!(get(addr, "/nope").0, "HTTP/1.1 404 Not Found");
        assert_eq!(
            exchange(addr, b"garbage\r\n\r\n").0,
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            exchange(addr, b"GET metrics HTTP/1.1\r\n\r\n").0,
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            exchange(addr, b"\xff\xfe\r\n\r\n").0,
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
            "HTTP/1.1 405 Method Not Allowed"
        );
        let (status, headers, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("openmetrics-text"));
        assert_eq!(body, "");

        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(MAX_REQUEST + 100, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            exchange(addr, &huge).0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        // A client that hangs up early is nobody's problem.
        drop(std::net::TcpStream::connect(addr).unwrap());

        assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
    }

    #[test]
    fn basic_auth_guards_every_path() {
        let hash = bcrypt::hash_with_salt("secret", 4, [1; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let web = WebConfig::parse(
            &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        let addr = start_with(fixed(), web);
        for path in ["/metrics", "/", "/nope"] {
            let (status, headers, body) = get(addr, path);
            assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{path}");
            assert!(
                headers.contains("Www-Authenticate: Basic realm=\"filter-agent\""),
                "{headers}"
            );
            assert!(!body.contains("filter_agent_"), "{body}");
        }
        // "prometheus:secret" and "prometheus:wrong" in base64.
        let with = |credentials: &str| {
            exchange(
                addr,
                format!("GET /metrics HTTP/1.1\r\nAuthorization: Basic {credentials}\r\n\r\n")
                    .as_bytes(),
            )
        };
        assert_eq!(
            with("cHJvbWV0aGV1czp3cm9uZw==").0,
            "HTTP/1.1 401 Unauthorized"
        );
        let (status, _, body) = with("cHJvbWV0aGV1czpzZWNyZXQ=");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, render(&snapshot()));
    }

    #[test]
    fn a_failing_snapshot_is_a_500_and_the_next_scrape_works() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let addr = start(Arc::new(move || {
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                anyhow::bail!("map gone")
            }
            Ok(snapshot())
        }));
        assert_eq!(
            get(addr, "/metrics").0,
            "HTTP/1.1 500 Internal Server Error"
        );
        assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
    }

    #[test]
    fn a_silent_client_times_out_without_holding_up_others() {
        let addr = start(fixed());
        let started = Instant::now();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent.write_all(b"GET /metrics HT").unwrap();

        assert_eq!(get(addr, "/metrics").0, "HTTP/1.1 200 OK");
        assert!(started.elapsed() < IO_TIMEOUT);

        silent.set_read_timeout(Some(IO_TIMEOUT * 3)).unwrap();
        let mut response = String::new();
        silent.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{response}"
        );
        assert!(started.elapsed() >= IO_TIMEOUT);
    }

    #[test]
    fn a_client_that_half_closes_after_its_request_is_answered() {
        let addr = start(fixed());
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("# EOF\n"), "{response}");
    }
}
