//! Bar charts as inline SVG: one series per chart with its title on top, the
//! largest value on the axis and every bar's label and value in its tooltip, so a
//! chart reads without a legend. The page also shows the numbers as a table.

use std::fmt::Write;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// Escapes text for SVG/HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A compact number for an axis: 1234 → 1.2k, 0.5 → 0.5.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let (n, unit) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if n.fract() == 0.0 {
        format!("{n:.0}")
    } else if n.abs() >= 10.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{unit}")
}

/// An SVG bar chart of `(label, value)` pairs, labelled for screen readers.
pub fn bars(title: &str, points: &[(String, f64)], unit: &str) -> String {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let n = points.len().max(1) as f64;
    let slot = (WIDTH - LEFT) / n;
    let bar = (slot * 0.8).max(1.0);
    let plot = HEIGHT - BOTTOM - TOP;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<figure class="chart"><figcaption>{t}</figcaption><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}" preserveAspectRatio="none">"#,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y}"/><line class="axis" x1="{LEFT}" y1="{y}" x2="{WIDTH}" y2="{y}"/><text class="tick" x="{x}" y="{ty}" text-anchor="end">{m}</text><text class="tick" x="{x}" y="{y}" text-anchor="end">0</text>"#,
        y = HEIGHT - BOTTOM,
        x = LEFT - 4.0,
        ty = TOP + 8.0,
        m = escape(&format!("{}{unit}", short(max)))
    );
    for (i, (label, v)) in points.iter().enumerate() {
        let h = (v.max(0.0) / scale) * plot;
        let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
        let y = HEIGHT - BOTTOM - h;
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}"><title>{l}: {val}{u}</title></rect>"#,
            l = escape(label),
            val = escape(&short(*v)),
            u = escape(unit)
        );
    }
    // The first, middle and last labels under the axis: enough to read the range.
    let mut shown: Vec<usize> = vec![0, points.len() / 2, points.len().saturating_sub(1)];
    shown.dedup();
    let last = points.len().saturating_sub(1);
    for i in shown.into_iter().filter(|i| *i < points.len()) {
        // The end labels align inward, so they are not cut at the edges.
        let (x, anchor) = match i {
            0 => (LEFT, "start"),
            i if i == last => (WIDTH, "end"),
            i => (LEFT + i as f64 * slot + slot / 2.0, "middle"),
        };
        let _ = write!(
            svg,
            r#"<text class="tick" x="{x:.1}" y="{y}" text-anchor="{anchor}">{l}</text>"#,
            y = HEIGHT - 6.0,
            l = escape(&points[i].0)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_shorten() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(1234.0), "1.23k");
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(short(3_500_000.0), "3.5M");
    }

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(
            "Calls <per hour>",
            &[("a&b".into(), 10.0), ("c".into(), 5.0)],
            "",
        );
        assert!(svg.contains("Calls &lt;per hour&gt;"));
        assert!(svg.contains("<title>a&amp;b: 10</title>"));
        assert_eq!(svg.matches("<rect").count(), 2);
        // The larger bar fills the plot; the other is half of it.
        assert!(svg.contains(r#"height="130.0""#) && svg.contains(r#"height="65.0""#));
        assert!(bars("empty", &[], "").contains("</svg>"));
    }
}
