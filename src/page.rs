//! The status page: one server-rendered HTML document, its style and a few
//! lines of script inline (the device may be offline: no external assets,
//! no build step). Per camera it shows the latest frame with each face's
//! box coloured by decision and labelled with its norm or reason, the norm
//! histogram against the threshold, the threshold's recent history and a
//! strip of recent crops; below, stage times, the queue and uploads. The
//! script re-fetches the page every two seconds and swaps its content.

use std::fmt::Write;

use crate::calibrate::{calibrate_sorted, Calibration};
use crate::http::Status;
use crate::status::CameraStatus;

/// Green for a face that passed (or is held as its track's best), red for a
/// dropped one, grey for a face not judged (not embedded, contested).
fn colour(pass: bool, reason: &str) -> &'static str {
    match (pass, reason) {
        (true, _) | (_, "held") | (_, "not_best") => "#2ea043",
        (_, "not_embedded") | (_, "contested") => "#8b949e",
        _ => "#d64541",
    }
}

/// Escapes text for HTML content and attributes.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A face's label: its norm when it was embedded, else why it was not.
fn label(norm: f32, reason: &str) -> String {
    if norm > 0.0 {
        format!("{norm:.1} {reason}")
    } else {
        reason.to_string()
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1em;background:#f6f8fa;color:#1f2328}\
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:1em;margin-bottom:1em}\
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}\
.frame{position:relative;max-width:640px}.frame img,.frame svg{width:100%;display:block}\
.frame svg{position:absolute;top:0;left:0}\
.crops{display:flex;flex-wrap:wrap;gap:6px}.crop{width:100px;font-size:11px}\
.crop img{width:96px;height:96px;border:3px solid}\
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}";

/// Re-fetches the page and swaps the live part, so the view stays current
/// without a reload's flicker.
const SCRIPT: &str = "setInterval(async()=>{try{const r=await fetch(location.pathname,{cache:'no-store'});\
if(!r.ok)return;const d=new DOMParser().parseFromString(await r.text(),'text/html');\
document.getElementById('live').replaceWith(d.getElementById('live'))}catch(e){}},2000);";

/// The whole page.
pub fn render(status: &Status) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>normgate status</title>\
         <meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>\
         <h1>normgate {}</h1><div id=live>",
        esc(status.version)
    );
    if status.cameras.is_empty() {
        html.push_str("<section>No camera has reported yet.</section>");
    }
    for camera in &status.cameras {
        render_camera(&mut html, camera, status);
    }
    render_run(&mut html, status);
    let _ = write!(html, "</div><script>{SCRIPT}</script></body></html>");
    html
}

fn render_camera(html: &mut String, c: &CameraStatus, status: &Status) {
    let counts = status.summary.cameras.iter().find(|s| s.id == c.id);
    let id = esc(&c.id);
    let _ = write!(html, "<section class=camera id='camera-{id}'><h2>Camera {id}</h2><p>");
    let _ = write!(html, "{:.1} frames/s", c.fps);
    if let Some(t) = c.threshold {
        let _ = write!(html, " · threshold <b class=threshold>{t:.2}</b>");
    }
    if let Some(s) = counts {
        let dropped: u64 = s.dropped.values().sum();
        let _ = write!(
            html,
            " · {} frames, {} faces, <span class=passed>{} passed</span>, {} dropped",
            s.frames, s.faces, s.passed, dropped
        );
        for (reason, n) in &s.dropped {
            let _ = write!(html, " ({} {n})", esc(reason));
        }
    }
    html.push_str("</p><div class=row>");
    match &c.frame {
        Some(f) => {
            let [w, h] = f.size;
            let _ = write!(
                html,
                "<div class=frame><img alt='latest frame' src='/api/cameras/{}/frame.jpg?n={}'>\
                 <svg viewBox='0 0 {w} {h}' preserveAspectRatio='none'>",
                urlencode(&c.id),
                f.index
            );
            for face in &f.faces {
                let [x1, y1, x2, y2] = face.bbox;
                let colour = colour(face.pass, &face.reason);
                let _ = write!(
                    html,
                    "<rect class='face {}' x='{x1:.0}' y='{y1:.0}' width='{:.0}' height='{:.0}' \
                     fill='none' stroke='{colour}' stroke-width='3'/>\
                     <text x='{x1:.0}' y='{:.0}' fill='{colour}' stroke='#fff' stroke-width='3' paint-order='stroke' font-size='16' font-weight='bold'>{}</text>",
                    esc(&face.reason),
                    x2 - x1,
                    y2 - y1,
                    (y1 - 4.0).max(14.0),
                    esc(&label(face.norm, &face.reason))
                );
            }
            let _ = write!(
                html,
                "</svg><div>frame {} ({}) at {}</div></div>",
                f.index,
                esc(&f.name),
                esc(&f.time)
            );
        }
        None => html.push_str("<div class=frame>No frame yet.</div>"),
    }
    html.push_str("<div>");
    render_histogram(html, &c.norms, c.threshold);
    render_thresholds(html, &c.thresholds);
    html.push_str("</div></div><h3>Recent crops</h3><div class=crops>");
    for crop in &c.crops {
        let track = crop.track.map(|t| format!(" · track {t}")).unwrap_or_default();
        let _ = write!(
            html,
            "<div class='crop {}'><img alt='{}' src='/api/crops/{}.jpg' style='border-color:{}'>\
             <div>{}</div><div>{}{track}</div></div>",
            esc(&crop.reason),
            esc(&crop.reason),
            crop.id,
            colour(crop.pass, &crop.reason),
            esc(&label(crop.norm, &crop.reason)),
            esc(crop.time.get(11..19).unwrap_or(&crop.time)),
        );
    }
    if c.crops.is_empty() {
        html.push_str("No face yet.");
    }
    html.push_str("</div></section>");
}

/// Bars of the recent norms, red below the threshold, with the threshold as a line.
fn render_histogram(html: &mut String, norms: &[f32], threshold: Option<f32>) {
    const W: f32 = 360.0;
    const H: f32 = 140.0;
    let _ = write!(html, "<h3>Norms of the last {} faces judged</h3>", norms.len());
    if norms.is_empty() {
        html.push_str("<p>None yet.</p>");
        return;
    }
    let mut sorted = norms.to_vec();
    sorted.sort_by(f32::total_cmp);
    // What `normgate calibrate` would suggest on these norms; its histogram is the one drawn.
    let suggestions: Vec<Calibration> = [0.1, 0.2, 0.3]
        .iter()
        .filter_map(|&rate| calibrate_sorted(&sorted, rate).ok())
        .collect();
    let Some(first) = suggestions.first() else {
        return;
    };
    let ([low, high], bins) = (first.range, &first.bins);
    let tallest = bins.iter().map(|b| b.faces).max().unwrap_or(1).max(1) as f32;
    let bar = W / bins.len() as f32;
    let _ = write!(html, "<svg class=histogram width='{W}' height='{}'>", H + 16.0);
    for (i, b) in bins.iter().enumerate() {
        let h = b.faces as f32 / tallest * H;
        let fill = if threshold.is_some_and(|t| b.to <= t) {
            "#d64541"
        } else {
            "#2ea043"
        };
        let _ = write!(
            html,
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{h:.1}' fill='{fill}'/>",
            i as f32 * bar,
            H - h,
            (bar - 1.0).max(1.0)
        );
    }
    if let Some(t) = threshold {
        let x = ((t - low) / (high - low).max(f32::EPSILON) * W).clamp(0.0, W);
        let _ = write!(
            html,
            "<line x1='{x:.1}' x2='{x:.1}' y1='0' y2='{H}' stroke='#000' stroke-width='2'/>"
        );
    }
    let _ = write!(
        html,
        "<text x='0' y='{}' font-size='12'>{low:.1}</text><text x='{W}' y='{}' font-size='12' text-anchor='end'>{high:.1}</text></svg>",
        H + 14.0,
        H + 14.0
    );
    let suggestions: Vec<String> = suggestions
        .iter()
        .map(|c| format!("{:.0} %: {:.2}", 100.0 * c.drop_rate, c.threshold))
        .collect();
    let _ = write!(
        html,
        "<div class=suggestions>Fixed threshold dropping {} of these faces</div>",
        suggestions.join(" · ")
    );
}

/// The threshold over the last minutes, as a line.
fn render_thresholds(html: &mut String, samples: &[(f64, f32)]) {
    const W: f64 = 360.0;
    const H: f64 = 60.0;
    html.push_str("<h3>Threshold, last minutes</h3>");
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        html.push_str("<p>None yet.</p>");
        return;
    };
    let low = samples.iter().map(|s| s.1).fold(f32::INFINITY, f32::min);
    let high = samples.iter().map(|s| s.1).fold(f32::NEG_INFINITY, f32::max);
    let span_t = (last.0 - first.0).max(1.0);
    let span_v = f64::from((high - low).max(1e-3));
    let points: Vec<String> = samples
        .iter()
        .map(|(t, v)| {
            let x = (t - first.0) / span_t * W;
            let y = H - 4.0 - f64::from(v - low) / span_v * (H - 8.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        html,
        "<svg class=thresholds width='{W}' height='{H}'><polyline fill='none' stroke='#0969da' stroke-width='2' points='{}'/></svg>\
         <div>{low:.2} to {high:.2}</div>",
        points.join(" ")
    );
}

fn render_run(html: &mut String, status: &Status) {
    let s = &status.summary;
    let u = &s.uploads;
    html.push_str("<section><h2>Run</h2><table><tr><th>stage</th><th>ms</th></tr>");
    for (stage, ms) in &s.stage_ms {
        let _ = write!(html, "<tr><td>{}</td><td>{ms:.1}</td></tr>", esc(stage));
    }
    let _ = write!(
        html,
        "</table><p>{:.1} frames/s over {:.0} s · uploads: {} delivered, {} failed attempts, \
         {} rejected, <span class=queued>{} queued</span>, {} evicted</p></section>",
        s.frames_per_s, s.seconds, u.delivered, u.failed_attempts, u.rejected, u.queued, u.evicted
    );
}

/// Percent-encodes a camera id for a URL path segment.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_run_is_escaped_and_faces_are_coloured_by_decision() {
        assert_eq!(esc("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
        assert_eq!(colour(true, "passed"), colour(false, "held"));
        assert_ne!(colour(true, "passed"), colour(false, "low_norm"));
        assert_eq!(colour(false, "contested"), colour(false, "not_embedded"));
        assert_eq!(label(12.34, "passed"), "12.3 passed");
        assert_eq!(label(0.0, "small_face"), "small_face");
        assert_eq!(urlencode("door 1/é"), "door%201%2F%C3%A9");
    }
}
