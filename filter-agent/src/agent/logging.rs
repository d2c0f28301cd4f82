//! The daemon's log: one line per record on stderr, as key=value text (the default) or
//! as one JSON object per line (`--log-format json`) for log pipelines (journald, Vector,
//! Loki) that query fields: `{"ts":…,"level":"info","event":"drop","source":…}`.
//!
//! Events (drops, offender alerts) carry their fields as the log record's key-values
//! ([`event`]); the text form writes them as the `key=value` message, the JSON form as
//! members. Any other line is `{"ts","level","message"}` in JSON.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

use super::events::Fields;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL key=value …`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs one event: its `key=value` line as the message, its fields as key-values.
pub fn event(level: log::Level, fields: &Fields) {
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(module_path!())
            .args(format_args!("{fields}"))
            .key_values(fields)
            .build(),
    );
}

/// syslog priority of a level, for journald's `<N>` line prefix.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Daemon logging: one record per line. Under systemd (JOURNAL_STREAM set) every line
/// starts with its syslog priority (`<6>`), which journald turns into PRIORITY=, and
/// text lines have no timestamp since journald adds its own; JSON lines keep `ts` so an
/// object stays whole wherever it is shipped.
pub fn init_logging(format: LogFormat) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(move |buf, record| {
        if journal {
            write!(buf, "<{}>", priority(record.level()))?;
        }
        match format {
            LogFormat::Text if journal => writeln!(buf, "{}", record.args()),
            LogFormat::Text => writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            ),
            LogFormat::Json => {
                let ts = buf.timestamp_millis().to_string();
                writeln!(buf, "{}", json_line(&ts, record))
            }
        }
    });
    builder.init();
}

/// One record as a JSON object: `ts`, `level`, then the event's fields in their order,
/// or `message`.
fn json_line(ts: &str, record: &log::Record) -> String {
    let mut members = Members(vec![
        ("ts".into(), ts.into()),
        (
            "level".into(),
            record.level().as_str().to_ascii_lowercase().into(),
        ),
    ]);
    // Our own Source never fails to visit.
    let _ = record.key_values().visit(&mut members);
    if members.0.len() == 2 {
        members
            .0
            .push(("message".into(), record.args().to_string().into()));
    }
    let members: Vec<String> = members
        .0
        .iter()
        .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(key.as_str())))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// Key-values as JSON members: numbers stay numbers.
struct Members(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Members {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = match value.to_u64() {
            Some(n) => n.into(),
            None => value.to_string().into(),
        };
        self.0.push((key.as_str().to_string(), json));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::events::Field;

    #[test]
    fn an_event_is_one_object_with_its_fields_and_a_line_is_a_message() {
        let fields = Fields(vec![
            ("event", Field::Text("drop".into())),
            ("group", Field::Text("odd \"name\"".into())),
            ("dport", Field::Number(25)),
        ]);
        let line = json_line(
            "2026-12-02T05:00:00.123Z",
            &log::Record::builder()
                .level(log::Level::Info)
                .args(format_args!("{fields}"))
                .key_values(&fields)
                .build(),
        );
        assert_eq!(
            line,
            r#"{"ts":"2026-12-02T05:00:00.123Z","level":"info","event":"drop","group":"odd \"name\"","dport":25}"#
        );
        let line = json_line(
            "2026-12-02T05:00:00.123Z",
            &log::Record::builder()
                .level(log::Level::Warn)
                .args(format_args!("reload refused: a \"b\"\nc"))
                .build(),
        );
        assert_eq!(
            line,
            r#"{"ts":"2026-12-02T05:00:00.123Z","level":"warn","message":"reload refused: a \"b\"\nc"}"#
        );
    }
}
