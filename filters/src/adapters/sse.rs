//! Splitting a provider's SSE stream into events as chunks arrive.

/// One event: its `event:` name (if any) and its `data:` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

/// An event larger than this is dropped unread.
const MAX_EVENT: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// How far `buf` was already searched for a blank line.
    scanned: usize,
}

impl Splitter {
    /// Complete events in what has arrived so far.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, skip)) = find_blank_line(&self.buf, self.scanned) {
            let raw: Vec<u8> = self.buf.drain(..end + skip).collect();
            self.scanned = 0;
            if let Some(ev) = parse(&raw[..end]) {
                out.push(ev);
            }
        }
        // Resume where this search stopped (less a possible half of `\r\n\r\n`).
        self.scanned = self.buf.len().saturating_sub(3);
        if self.buf.len() > MAX_EVENT {
            self.buf.clear();
            self.scanned = 0;
        }
        out
    }

    /// An event the stream ended without its blank line.
    pub fn rest(&mut self) -> Option<Event> {
        let raw = std::mem::take(&mut self.buf);
        self.scanned = 0;
        parse(&raw)
    }
}

/// A stream read event by event: each implementor says what an event means
/// and what the end owes; splitting and the event cut short are done here.
pub trait EventReader {
    fn splitter(&mut self) -> &mut Splitter;
    fn event(&mut self, ev: Event, out: &mut Vec<u8>);
    /// The stream ended, after any event it cut short.
    fn end(&mut self, out: &mut Vec<u8>);

    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for ev in self.splitter().push(chunk) {
            self.event(ev, &mut out);
        }
        out
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ev) = self.splitter().rest() {
            self.event(ev, &mut out);
        }
        self.end(&mut out);
        out
    }
}

fn find_blank_line(b: &[u8], from: usize) -> Option<(usize, usize)> {
    (from..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\n\n") {
            Some((i, 2))
        } else if b[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else {
            None
        }
    })
}

fn parse(raw: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_string()),
            }
        }
    }
    data.map(|data| Event { name, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks() {
        let mut s = Splitter::default();
        assert!(s.push(b"event: ping\ndata: {\"a\"").is_empty());
        let evs = s.push(b":1}\n\ndata: x\r\n\r\n: comment\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].name.as_deref(), Some("ping"));
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].data, "x");
        assert!(s.push(b"data: tail").is_empty());
        assert_eq!(s.rest().unwrap().data, "tail");
    }
}
