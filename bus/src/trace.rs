//! W3C trace context on the bus: a message about a command carries a `traceparent` header
//! whose trace id is the command's correlation id, from the API call to the node's work and
//! back with its reports, so that one trace id follows a request end to end.

use uuid::Uuid;

/// The header's name.
pub const HEADER: &str = "traceparent";

/// `traceparent` for trace `trace` (a correlation id), with a span id made from `span_of` (the
/// message's id): the same message sent twice says the same.
pub fn traceparent(trace: Uuid, span_of: &str) -> String {
    // FNV-1a: a span id needs to be stable and non-zero, not secret.
    let span = span_of
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("00-{}-{:016x}-01", trace.simple(), span.max(1))
}

/// The trace id of a `traceparent`, if it is one (version 00, ids neither zero nor malformed).
pub fn trace_id(traceparent: &str) -> Option<Uuid> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00" || parts.next().is_some() || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
    (u64::from_str_radix(span, 16).ok()? != 0).then_some(Uuid::from_u128(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_carries_the_correlation_id_and_reads_back() {
        let id = Uuid::from_u128(0x0192_f6a1_0000_7000_8000_0000_0000_002a);
        let header = traceparent(id, "msg-1");
        assert!(header.starts_with(&format!("00-{}-", id.simple())) && header.len() == 55, "{header}");
        assert_eq!(trace_id(&header), Some(id));
        assert_eq!(traceparent(id, "msg-1"), header, "the same message says the same");
    }

    #[test]
    fn what_is_not_a_traceparent_is_refused() {
        for text in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(text), None, "{text}");
        }
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(valid), Some(Uuid::from_u128(0x4bf92f3577b34da6a3ce929d0e0e4736)));
    }
}
