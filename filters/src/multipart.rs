//! Just enough of `multipart/form-data` to route an upload by its `model` field
//! without holding the upload: the field is looked for in what has arrived so
//! far, and rewritten there when the channel names the model otherwise. The rest
//! of the body is never parsed; it is passed on as it arrives.

use std::ops::Range;

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim().eq_ignore_ascii_case("boundary") && !v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// What the body so far says of a field.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Its value, and where the value's bytes are.
    Found { value: String, at: Range<usize> },
    /// Not in what arrived; more may bring it.
    More,
    /// The body ended (or is not multipart as declared) without it.
    Absent,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)
        .and_then(|h| memchr::memmem::find(h, needle))
        .map(|i| from + i)
}

/// Looks for the text field `name` in `buf`; `complete` when `buf` is the whole body.
pub fn find_field(buf: &[u8], boundary: &str, name: &str, complete: bool) -> Scan {
    let delim = format!("--{boundary}");
    let more = if complete { Scan::Absent } else { Scan::More };
    let Some(mut at) = find(buf, delim.as_bytes(), 0) else {
        return more;
    };
    loop {
        let after = at + delim.len();
        match buf.get(after..after + 2) {
            Some(b"--") => return Scan::Absent,
            Some(b"\r\n") => {}
            Some(_) => return Scan::Absent,
            None => return more,
        }
        let heads = after + 2;
        let Some(end) = find(buf, b"\r\n\r\n", heads) else {
            return more;
        };
        let part_name = part_name(&buf[heads..end + 4]);
        let start = end + 4;
        let close = format!("\r\n{delim}");
        let Some(stop) = find(buf, close.as_bytes(), start) else {
            return more;
        };
        if part_name.as_deref() == Some(name) {
            return match std::str::from_utf8(&buf[start..stop]) {
                Ok(v) => Scan::Found {
                    value: v.trim().to_string(),
                    at: start..stop,
                },
                Err(_) => Scan::Absent,
            };
        }
        at = stop + 2;
    }
}

/// The `name` of a part from its headers (`Content-Disposition: form-data; name="model"`).
fn part_name(heads: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let httparse::Status::Complete((_, parsed)) =
        httparse::parse_headers(heads, &mut headers).ok()?
    else {
        return None;
    };
    let disposition = parsed
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))?;
    let value = std::str::from_utf8(disposition.value).ok()?;
    value.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `buf` with the bytes `at` replaced by `value`.
pub fn replace(buf: &[u8], at: Range<usize>, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + value.len());
    out.extend_from_slice(&buf[..at.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&buf[at.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ123";

    fn body(model_first: bool) -> Vec<u8> {
        let model =
            "--XyZ123\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n";
        let file = "--XyZ123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....data\r\n";
        let (a, b) = if model_first {
            (model, file)
        } else {
            (file, model)
        };
        format!("{a}{b}--XyZ123--\r\n").into_bytes()
    }

    #[test]
    fn the_boundary_is_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ123"),
            Some("XyZ123")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=x; boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
    }

    #[test]
    fn the_model_is_found_wherever_it_is_and_as_soon_as_it_arrived() {
        for first in [true, false] {
            let b = body(first);
            let Scan::Found { value, at } = find_field(&b, B, "model", true) else {
                panic!("not found");
            };
            assert_eq!(value, "whisper-1");
            assert_eq!(&b[at.clone()], b"whisper-1");
            // In every prefix: found once its value ended, until then asked for more.
            let needed = at.end + 2 + 2 + B.len();
            for n in 0..b.len() {
                let scan = find_field(&b[..n], B, "model", false);
                match n >= needed {
                    true => assert!(matches!(scan, Scan::Found { .. }), "{n}: {scan:?}"),
                    false => assert_eq!(scan, Scan::More, "{n}"),
                }
            }
            let swapped = replace(&b, at, "gpt-4o-transcribe");
            assert!(
                matches!(find_field(&swapped, B, "model", true), Scan::Found { value, .. } if value == "gpt-4o-transcribe")
            );
        }
    }

    #[test]
    fn a_body_without_the_field_says_so_at_its_end() {
        let b = b"--XyZ123\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ123--\r\n";
        assert_eq!(find_field(b, B, "model", false), Scan::Absent);
        assert_eq!(
            find_field(b"not multipart at all", B, "model", true),
            Scan::Absent
        );
    }
}
