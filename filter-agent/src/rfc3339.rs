//! Serde for `SystemTime` as an RFC 3339 UTC timestamp, as `status` shows times.

use std::time::SystemTime;

use serde::Serializer;

pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
}
