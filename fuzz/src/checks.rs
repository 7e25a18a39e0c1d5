//! What the fuzz targets check on arbitrary input. `tcpstate/tests/fuzz_corpus.rs` includes this
//! file too, so every `cargo test` runs the corpus through exactly these checks on stable Rust.
//!
//! A check panics when a property fails; returning at all means the input was handled.

use tcpstate::{
    record::{RecordError, RecordReader, RecordWriter, FORMAT_VERSION},
    tpformat,
};
use tcpstate_common::MAX_RECORD_LEN;

/// Parses `data` as a tracepoint format file; returns whether it yielded a layout. A layout must
/// be one the kernel program can use: every field inside the bytes it copies.
pub fn tpformat(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    if let Ok(fields) = tpformat::parse_fields(&text) {
        for f in &fields {
            assert!(
                !f.name.is_empty() && f.decl.contains(f.name.as_str()),
                "{f:?}"
            );
        }
    }
    let Ok(l) = tpformat::inet_sock_set_state_layout(&text) else {
        return false;
    };
    assert!(matches!(l.protocol_size, 1 | 2), "{l:?}");
    assert!(usize::from(l.record_len) <= MAX_RECORD_LEN, "{l:?}");
    let fields = [
        (l.skaddr, 8),
        (l.oldstate, 4),
        (l.newstate, 4),
        (l.sport, 2),
        (l.dport, 2),
        (l.family, 2),
        (l.protocol, l.protocol_size),
        (l.saddr, 4),
        (l.daddr, 4),
        (l.saddr_v6, 16),
        (l.daddr_v6, 16),
    ];
    for (offset, size) in fields {
        assert!(
            u32::from(offset) + u32::from(size) <= u32::from(l.record_len),
            "field at {offset} of {size} bytes outside {l:?}"
        );
    }
    true
}

/// Reads `data` as a recording to its end; returns the number of records, or the error that
/// stopped the reader. Whatever was accepted must be exactly what the writer would write for
/// it: the reader neither invents nor loses anything. (An older format version is written as
/// the current one: that rewrite must read back as the same inputs.)
pub fn record(data: &[u8]) -> Result<usize, RecordError> {
    let (mut reader, header) = RecordReader::open(data)?;
    let mut writer = RecordWriter::new(Vec::new(), &header).expect("writing to a Vec");
    let mut count = 0;
    let mut error = None;
    let mut inputs = Vec::new();
    for item in reader.by_ref() {
        match item {
            Ok(input) => {
                writer.write(&input).expect("writing to a Vec");
                inputs.push(input);
                count += 1;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(reader.next().is_none(), "records after the end or an error");
    let valid = usize::try_from(reader.offset()).expect("offset within the input");
    assert!(valid <= data.len());
    let rewritten = writer.finish().expect("writing to a Vec");
    if reader.format_version() == FORMAT_VERSION {
        assert!(
            rewritten == data[..valid],
            "re-encoding differs from the input"
        );
    } else {
        let (again, again_header) = RecordReader::open(&rewritten[..]).expect("own output");
        assert_eq!(again_header, header, "header changed by the rewrite");
        let again: Vec<_> = again.map(|i| i.expect("own output")).collect();
        assert!(again == inputs, "the rewrite reads back differently");
    }
    match error {
        Some(e) => {
            assert_eq!(e.offset as usize, valid, "{e}");
            assert!(valid < data.len(), "an error with no bytes left: {e}");
            Err(e)
        }
        None => {
            assert_eq!(valid, data.len(), "a clean end before the end of the input");
            Ok(count)
        }
    }
}
