//! A backend answer's head (status line and headers): `upstream::fuzz_parse_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, status))) = botbridge::upstream::fuzz_parse_head(data) {
        assert!(len <= data.len(), "the head is longer than the input");
        assert!(
            data[..len].ends_with(b"\n"),
            "the head does not end with its empty line"
        );
        // Three digits; httparse also reads `000`–`099`, which no dialect takes for a success.
        assert!(status < 1000, "status {status}");
        // The head parses the same with anything after it.
        assert_eq!(
            botbridge::upstream::fuzz_parse_head(&data[..len]),
            Ok(Some((len, status)))
        );
    }
});
