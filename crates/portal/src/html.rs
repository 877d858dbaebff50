//! Server-rendered HTML: escaping, the page frame, small widgets. No
//! script at all: forms post back, the vital-sign chart is inline SVG.

use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One navigation entry: its path, its label.
pub type NavItem = (&'static str, &'static str);

/// A whole page: one `h1`, navigation between the views the identity may
/// use, the body, and a footer line (e.g. the key authority's attestation).
pub fn page(
    title: &str,
    who: &str,
    nav: &[NavItem],
    current: &str,
    body: &str,
    footer: &str,
) -> String {
    let mut links = String::new();
    for (path, label) in nav {
        let here = if *path == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(links, "<a href=\"{path}\"{here}>{}</a>", esc(label));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - asclepios</title>\
         <link rel=\"stylesheet\" href=\"/static/portal.css\"></head>\
         <body><header><nav aria-label=\"Views\">{links}</nav>\
         <span>Signed in on this device as <strong>{who}</strong></span></header>\
         <main id=\"main\"><h1>{title}</h1>{body}</main><footer><p>{footer}</p></footer></body></html>",
        title = esc(title),
        who = esc(who),
        footer = esc(footer),
    )
}

/// An error paragraph that assistive technology announces.
pub fn alert(message: &str) -> String {
    format!("<p class=\"error\" role=\"alert\">{}</p>", esc(message))
}

/// A hidden CSRF field for a form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A table with a caption, header cells and rows of already-escaped cells;
/// each row may carry a class.
pub fn table(caption: &str, headers: &[&str], rows: &[(Option<&str>, Vec<String>)]) -> String {
    let mut out = format!("<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for (class, cells) in rows {
        match class {
            Some(c) => {
                let _ = write!(out, "<tr class=\"{}\">", esc(c));
            }
            None => out.push_str("<tr>"),
        }
        for c in cells {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A line chart of `(unix seconds, value)` points as inline SVG, with a
/// text alternative listing the values.
pub fn line_chart(label: &str, unit: &str, points: &[(i64, f64)]) -> String {
    if points.is_empty() {
        return format!("<p>No {} recorded.</p>", esc(label));
    }
    let (w, h, pad) = (600.0, 200.0, 30.0);
    let (t0, t1) = points.iter().fold((i64::MAX, i64::MIN), |(a, b), (t, _)| {
        (a.min(*t), b.max(*t))
    });
    let (v0, v1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, v)| {
        (a.min(*v), b.max(*v))
    });
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = (v1 - v0).max(1.0);
    let xy = |t: i64, v: f64| {
        (
            pad + (t - t0) as f64 / span_t * (w - 2.0 * pad),
            h - pad - (v - v0) / span_v * (h - 2.0 * pad),
        )
    };
    let mut path = String::new();
    let mut dots = String::new();
    for (t, v) in points {
        let (x, y) = xy(*t, *v);
        let _ = write!(path, "{x:.1},{y:.1} ");
        let _ = write!(
            dots,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#123\"></circle>"
        );
    }
    let summary = points
        .iter()
        .map(|(t, v)| format!("{} {v} {unit}", date(*t)))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "<figure><svg role=\"img\" aria-labelledby=\"chart-title\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\"><title id=\"chart-title\">{label}: {n} values from {from} to {to}, \
         {v0} to {v1} {unit}</title>\
         <polyline fill=\"none\" stroke=\"#246\" stroke-width=\"2\" points=\"{path}\"></polyline>\
         {dots}<text x=\"4\" y=\"14\" font-size=\"12\">{v1} {unit}</text>\
         <text x=\"4\" y=\"{bottom}\" font-size=\"12\">{v0} {unit}</text></svg>\
         <figcaption>{label} over time: {summary}</figcaption></figure>",
        label = esc(label),
        unit = esc(unit),
        n = points.len(),
        from = date(t0),
        to = date(t1),
        bottom = h - 4.0,
        summary = esc(&summary),
    )
}

/// A date (UTC) from Unix seconds.
pub fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| format!("{}-{:02}-{:02}", d.year(), d.month() as u8, d.day()))
        .unwrap_or_else(|_| t.to_string())
}

/// A date and time (UTC, to the minute) from Unix seconds.
pub fn date_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{}-{:02}-{:02} {:02}:{:02} UTC",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        let p = page("<b>", "a\"b", &[("/x", "<i>")], "/x", "", "<u>");
        assert!(
            !p.contains("<b>") && !p.contains("<i>") && !p.contains("a\"b") && !p.contains("<u>")
        );
    }

    #[test]
    fn charts_have_a_text_alternative() {
        let svg = line_chart("Systolic", "mm[Hg]", &[(0, 120.0), (86_400, 130.0)]);
        assert!(svg.contains("<title id=\"chart-title\">Systolic: 2 values"));
        assert!(svg.contains("1970-01-02 130 mm[Hg]"));
        assert!(line_chart("x", "u", &[]).contains("No x recorded"));
    }
}
