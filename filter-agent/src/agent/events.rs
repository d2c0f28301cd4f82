//! The EVENTS ring buffer as the agent reads it: sampled drop events and offender alerts,
//! each decoded fail-closed and logged as one line: `key=value` text, or JSON.

use std::net::IpAddr;

use filter_common::{Event, EventKind, Family, Reason, Verdict, records};

use super::{clock::Clock, offenders::AlertSettings};

/// One ring-buffer record as the kernel wrote it; `None` if it is too short.
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

fn address_text(family: u32, bytes: &[u8; 16]) -> String {
    records::address(family, bytes).map_or_else(|| "-".into(), |a| a.to_string())
}

/// A vocabulary name, or `unknown` for a number this agent does not know.
fn name_or_unknown(name: Result<&'static str, u32>) -> &'static str {
    name.unwrap_or("unknown")
}

/// TCP flags by name, `SYN,ACK`; `none` when no flag is set.
pub fn flags_text(flags: u32) -> String {
    const NAMES: [(u32, &str); 9] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
        (0x100, "NS"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// A log value: bare if it is one plain word, otherwise quoted with escapes.
pub fn value(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
    {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// Names the log lines need: a group's name by id, an interface's by ifindex.
pub trait Names {
    fn group(&self, id: u32) -> String;
    fn interface(&self, ifindex: u32) -> String;
    /// The subscriber whose session holds `source`, if known.
    fn subscriber(&self, source: IpAddr) -> Option<String>;
}

/// One field's value: text is quoted in key=value form when it needs to be (see
/// [`value`]) and a JSON string in JSON; a number is bare in both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Text(String),
    Number(u64),
}

/// The fields of one event, in their order, starting with `event`: written as one
/// `key=value` line, or handed to the logger as key-values for `--log-format json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields(pub Vec<(&'static str, Field)>);

impl Fields {
    fn text(mut self, key: &'static str, text: impl Into<String>) -> Fields {
        self.0.push((key, Field::Text(text.into())));
        self
    }

    fn number(mut self, key: &'static str, n: impl Into<u64>) -> Fields {
        self.0.push((key, Field::Number(n.into())));
        self
    }

    /// `subscriber` when a session holds the source.
    fn subscriber(self, names: &dyn Names, source: Option<IpAddr>) -> Fields {
        match source.and_then(|a| names.subscriber(a)) {
            Some(name) => self.text("subscriber", name),
            None => self,
        }
    }
}

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (key, field)) in self.0.iter().enumerate() {
            let space = if i == 0 { "" } else { " " };
            match field {
                Field::Text(text) => write!(f, "{space}{key}={}", value(text))?,
                Field::Number(n) => write!(f, "{space}{key}={n}")?,
            }
        }
        Ok(())
    }
}

impl log::kv::Source for Fields {
    fn visit<'kvs>(
        &'kvs self,
        visitor: &mut dyn log::kv::VisitSource<'kvs>,
    ) -> Result<(), log::kv::Error> {
        for (key, field) in &self.0 {
            let value = match field {
                Field::Text(text) => log::kv::Value::from(text.as_str()),
                Field::Number(n) => log::kv::Value::from(*n),
            };
            visitor.visit_pair(log::kv::Key::from_str(key), value)?;
        }
        Ok(())
    }
}

/// The fields of one event; `None` for a kind this agent does not know.
pub fn fields(
    event: &Event,
    clock: &Clock,
    names: &dyn Names,
    alerts: AlertSettings,
) -> Option<Fields> {
    let source = records::address(event.family, &event.source);
    match EventKind::try_from(event.kind).ok()? {
        EventKind::Sample => Some(
            Fields(Vec::new())
                .text("event", "drop")
                .text(
                    "time",
                    humantime::format_rfc3339_millis(clock.wall_of(event.time_ns)).to_string(),
                )
                .text("interface", names.interface(event.ifindex))
                .text("family", Family::from_code(event.family).name())
                .text("source", address_text(event.family, &event.source))
                .number("sport", event.sport)
                .text(
                    "destination",
                    address_text(event.family, &event.destination),
                )
                .number("dport", event.dport)
                .text(
                    "verdict",
                    name_or_unknown(Verdict::try_from(event.verdict).map(Verdict::name)),
                )
                .text(
                    "reason",
                    name_or_unknown(Reason::try_from(event.reason).map(Reason::name)),
                )
                .text("group", names.group(event.group))
                .text("flags", flags_text(event.tcp_flags))
                .subscriber(names, source),
        ),
        EventKind::Offender => Some(
            Fields(Vec::new())
                .text("event", "offender")
                .text(
                    "source",
                    event
                        .alert_key()
                        .map_or_else(|| "-".into(), |key| key.to_string()),
                )
                .text("group", names.group(event.group))
                .number("attempts", event.attempts)
                .text("window", alerts.window_text())
                .number("threshold", alerts.threshold)
                .subscriber(names, source),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use filter_common::SourceKey;

    use super::*;

    /// The key=value line of an event.
    fn key_value_line(
        event: &Event,
        clock: &Clock,
        names: &dyn Names,
        alerts: AlertSettings,
    ) -> Option<String> {
        fields(event, clock, names, alerts).map(|f| f.to_string())
    }

    const MINUTE: u64 = 60_000_000_000;

    struct Fixed;

    impl Names for Fixed {
        fn group(&self, id: u32) -> String {
            match id {
                1 => "residential".into(),
                2 => "odd name".into(),
                _ => "-".into(),
            }
        }
        fn interface(&self, ifindex: u32) -> String {
            format!("eth{ifindex}")
        }
        fn subscriber(&self, source: IpAddr) -> Option<String> {
            (source == IpAddr::from([100, 64, 0, 20])).then(|| "alice".into())
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&a);
        bytes
    }

    #[test]
    fn a_sample_is_one_key_value_line() {
        let c = Clock::fixed();
        let event = Event {
            time_ns: c.monotonic_ns - 250_000_000,
            kind: EventKind::Sample as u32,
            ifindex: 7,
            family: Family::Ipv4 as u32,
            verdict: Verdict::Drop as u32,
            reason: Reason::Blocked as u32,
            group: 1,
            source: v4([100, 64, 0, 10]),
            destination: v4([203, 0, 113, 9]),
            sport: 40000,
            dport: 25,
            tcp_flags: 0x02,
            attempts: 0,
        };
        let settings = AlertSettings {
            threshold: 100,
            window_ns: 10 * MINUTE,
        };
        assert_eq!(
            key_value_line(&event, &c, &Fixed, settings).unwrap(),
            "event=drop time=2026-09-21T14:13:19.750Z interface=eth7 family=ipv4 \
             source=100.64.0.10 sport=40000 destination=203.0.113.9 dport=25 verdict=drop \
             reason=blocked group=residential flags=SYN"
        );
        let v6 = Event {
            family: Family::Ipv6 as u32,
            verdict: Verdict::Reject as u32,
            reason: Reason::RateLimited as u32,
            group: 2,
            source: "2001:db8:1000::10".parse::<Ipv6Addr>().unwrap().octets(),
            destination: "2001:db8:ffff::25".parse::<Ipv6Addr>().unwrap().octets(),
            tcp_flags: 0x12,
            ..event
        };
        let line = key_value_line(&v6, &c, &Fixed, settings).unwrap();
        assert!(
            line.contains(
                "family=ipv6 source=2001:db8:1000::10 sport=40000 \
                 destination=2001:db8:ffff::25 dport=25 verdict=reject reason=rate-limited \
                 group=\"odd name\" flags=SYN,ACK"
            ),
            "{line}"
        );
        let monitored = Event {
            verdict: Verdict::Pass as u32,
            reason: Reason::Monitored as u32,
            tcp_flags: 0,
            ..event
        };
        let line = key_value_line(&monitored, &c, &Fixed, settings).unwrap();
        assert!(
            line.contains("verdict=pass reason=monitored group=residential flags=none"),
            "{line}"
        );
        assert_eq!(
            key_value_line(&Event { kind: 99, ..event }, &c, &Fixed, settings),
            None
        );
    }

    #[test]
    fn an_alert_names_the_source_key() {
        let settings = AlertSettings {
            threshold: 100,
            window_ns: 10 * MINUTE,
        };
        let mut source = [0u8; 16];
        source[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x10, 0x00, 0, 0]);
        let event = Event {
            kind: EventKind::Offender as u32,
            family: Family::Ipv6 as u32,
            group: 1,
            source,
            attempts: 100,
            ..Event::default()
        };
        assert_eq!(
            key_value_line(&event, &Clock::fixed(), &Fixed, settings).unwrap(),
            "event=offender source=2001:db8:1000::/64 group=residential attempts=100 \
             window=10m threshold=100"
        );
        let event = Event {
            family: Family::Ipv4 as u32,
            source: v4([100, 64, 0, 10]),
            attempts: 3,
            ..event
        };
        assert_eq!(
            key_value_line(
                &event,
                &Clock::fixed(),
                &Fixed,
                AlertSettings {
                    threshold: 3,
                    window_ns: 90 * 1_000_000_000
                }
            )
            .unwrap(),
            "event=offender source=100.64.0.10 group=residential attempts=3 \
             window=\"1m 30s\" threshold=3"
        );
        assert_eq!(
            event.alert_key().unwrap(),
            SourceKey {
                family: Family::Ipv4 as u32,
                address: [100, 64, 0, 10, 0, 0, 0, 0]
            }
        );
    }

    #[test]
    fn parse_checks_the_length() {
        let event = Event {
            time_ns: 5,
            kind: EventKind::Sample as u32,
            dport: 25,
            ..Event::default()
        };
        // SAFETY: viewing plain data as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&event as *const Event).cast::<u8>(), size_of::<Event>())
        };
        assert_eq!(parse(bytes), Some(event));
        // Unaligned, and with trailing bytes.
        let mut shifted = vec![0xaa];
        shifted.extend_from_slice(bytes);
        shifted.extend([0; 8]);
        assert_eq!(parse(&shifted[1..]), Some(event));
        assert_eq!(parse(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn flags_and_values() {
        assert_eq!(flags_text(0x02), "SYN");
        assert_eq!(flags_text(0x12), "SYN,ACK");
        assert_eq!(flags_text(0x11), "ACK,FIN");
        assert_eq!(flags_text(0x14), "ACK,RST");
        assert_eq!(flags_text(0), "none");
        assert_eq!(value("residential"), "residential");
        assert_eq!(value("a b"), "\"a b\"");
        assert_eq!(value("a=b"), "\"a=b\"");
        assert_eq!(value(""), "\"\"");
    }
}
