//! Pictures: an RGB canvas with the few drawing operations overlays and previews need (lines,
//! rectangles, labels in a small pixel font), segmentation overlays, and PNG files written
//! through the `png` crate. Charts with axes and legends are drawn by plotters in `train` and
//! arrive here as RGB buffers.

use std::path::Path;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [200, 200, 200];
/// Ground truth in overlays (as in the paper's Fig. 3).
pub const RED: Rgb = [230, 40, 40];
/// Prediction in overlays.
pub const GREEN: Rgb = [40, 210, 60];

/// An RGB image, row-major, origin top-left.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        Self { width, height, pixels: vec![background; width * height] }
    }

    /// A canvas from packed RGB bytes, row-major (`width × height × 3` of them).
    pub fn from_rgb(width: usize, height: usize, rgb: &[u8]) -> Self {
        assert_eq!(rgb.len(), width * height * 3, "RGB buffer of {width}×{height}");
        Self { width, height, pixels: rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect() }
    }

    /// Sets a pixel; coordinates outside the canvas are ignored, so shapes may be clipped.
    pub fn set(&mut self, x: i64, y: i64, color: Rgb) {
        if (0..self.width as i64).contains(&x) && (0..self.height as i64).contains(&y) {
            self.pixels[y as usize * self.width + x as usize] = color;
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    /// A straight line `thickness` pixels wide (Bresenham with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thickness: i64, color: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let half = thickness / 2;
        loop {
            self.fill_rect(x - half, y - half, thickness, thickness, color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in a 3×5 pixel font magnified `scale` times, top-left at (x, y). Letters are drawn
    /// upper-case; characters the font lacks are drawn as blanks.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, color: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let bits = glyph(ch.to_ascii_uppercase());
            let left = x + i as i64 * 4 * scale;
            for bit in 0..15 {
                if bits & (1 << bit) != 0 {
                    self.fill_rect(left + (bit % 3) * scale, y + (bit / 3) * scale, scale, scale, color);
                }
            }
        }
    }

    /// Width in pixels of `text` drawn at `scale`.
    pub fn text_width(text: &str, scale: i64) -> i64 {
        (text.chars().count() as i64 * 4 - 1).max(0) * scale
    }

    /// Copies `other` with its top-left corner at (x, y).
    pub fn paste(&mut self, other: &Canvas, x: i64, y: i64) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                self.set(x + xx as i64, y + yy as i64, other.pixels[yy * other.width + xx]);
            }
        }
    }

    /// Encodes the canvas as a PNG (8-bit RGB).
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("writing to memory");
        let rgb: Vec<u8> = self.pixels.iter().flatten().copied().collect();
        writer.write_image_data(&rgb).expect("a canvas holds width × height pixels");
        writer.finish().expect("writing to memory");
        out
    }

    /// Writes the PNG atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::files::write_atomic(path, &self.to_png())
    }
}

/// One axial slice as a grey image with the outlines of the ground truth (red) and of a
/// prediction (green), as in the paper's Fig. 3. `image` is `[h, w]` row-major (any scale:
/// it is windowed to its 1st–99th percentile); masks are 0/1 of the same size. Each source
/// pixel becomes `zoom × zoom` canvas pixels.
pub fn overlay(image: &[f32], truth: Option<&[u8]>, prediction: &[u8], h: usize, w: usize, zoom: usize) -> Canvas {
    let mut sorted: Vec<f32> = image.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let pick = |q: f64| sorted.get(((sorted.len().saturating_sub(1)) as f64 * q) as usize).copied().unwrap_or(0.0);
    let (lo, hi) = (pick(0.01), pick(0.99));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut canvas = Canvas::new(w * zoom, h * zoom, BLACK);
    for y in 0..h {
        for x in 0..w {
            let v = (((image[y * w + x] - lo) / span).clamp(0.0, 1.0) * 255.0) as u8;
            canvas.fill_rect((x * zoom) as i64, (y * zoom) as i64, zoom as i64, zoom as i64, [v, v, v]);
        }
    }
    let mut outline = |mask: &[u8], color: Rgb| {
        for y in 0..h {
            for x in 0..w {
                if mask[y * w + x] != 0 && is_boundary(mask, h, w, y, x) {
                    canvas.fill_rect((x * zoom) as i64, (y * zoom) as i64, zoom as i64, zoom as i64, color);
                }
            }
        }
    };
    if let Some(truth) = truth {
        outline(truth, RED);
    }
    outline(prediction, GREEN);
    canvas
}

/// Panels side by side, `gap` pixels apart on `background`, each with its label (in the pixel
/// font, black) above it when any panel has one.
pub fn row(panels: &[(&str, Canvas)], gap: usize, background: Rgb) -> Canvas {
    let label_h = if panels.iter().any(|(label, _)| !label.is_empty()) { 18 } else { 0 };
    let width = panels.iter().map(|(_, c)| c.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let height = label_h + panels.iter().map(|(_, c)| c.height).max().unwrap_or(0);
    let mut canvas = Canvas::new(width, height, background);
    let mut x = 0;
    for (label, panel) in panels {
        canvas.paste(panel, x as i64, label_h as i64);
        canvas.text(x as i64 + 2, 2, label, 2, BLACK);
        x += panel.width + gap;
    }
    canvas
}

/// A foreground pixel with a 4-neighbour outside the mask (or on the image border).
fn is_boundary(mask: &[u8], h: usize, w: usize, y: usize, x: usize) -> bool {
    y == 0
        || x == 0
        || y + 1 == h
        || x + 1 == w
        || mask[(y - 1) * w + x] == 0
        || mask[(y + 1) * w + x] == 0
        || mask[y * w + x - 1] == 0
        || mask[y * w + x + 1] == 0
}

/// 3×5 glyphs, bit `row * 3 + column` set where the pixel is on.
fn glyph(ch: char) -> u16 {
    FONT.iter().find(|(c, _)| *c == ch).map_or(0, |(_, bits)| *bits)
}

const FONT: [(char, u16); 44] = [
    (' ', 0x0000),
    ('(', 0x224a),
    (')', 0x2922),
    ('+', 0x05D0),
    ('-', 0x01c0),
    ('.', 0x2000),
    ('/', 0x12a4),
    ('0', 0x7b6f),
    ('1', 0x749a),
    ('2', 0x73e7),
    ('3', 0x79e7),
    ('4', 0x49ed),
    ('5', 0x79cf),
    ('6', 0x7bcf),
    ('7', 0x24a7),
    ('8', 0x7bef),
    ('9', 0x79ef),
    (':', 0x0410),
    ('A', 0x5bea),
    ('B', 0x3aeb),
    ('C', 0x624e),
    ('D', 0x3b6b),
    ('E', 0x72cf),
    ('F', 0x12cf),
    ('G', 0x6b4e),
    ('H', 0x5bed),
    ('I', 0x7497),
    ('J', 0x2b24),
    ('K', 0x5aed),
    ('L', 0x7249),
    ('M', 0x5bfd),
    ('N', 0x5b6b),
    ('O', 0x2b6a),
    ('P', 0x12eb),
    ('Q', 0x676a),
    ('R', 0x5aeb),
    ('S', 0x388e),
    ('T', 0x2497),
    ('U', 0x7b6d),
    ('V', 0x2b6d),
    ('W', 0x5fed),
    ('X', 0x5aad),
    ('Y', 0x24ad),
    ('Z', 0x72a7),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_through_a_decoder() {
        let mut c = Canvas::new(3, 2, WHITE);
        c.set(1, 0, RED);
        c.set(2, 1, [1, 2, 3]);
        let png = c.to_png();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (3, 2, png::ColorType::Rgb));
        assert_eq!(Canvas::from_rgb(3, 2, &rgb[..info.buffer_size()]), c);
    }

    #[test]
    fn a_row_places_panels_side_by_side_under_their_labels() {
        let (a, b) = (Canvas::new(4, 3, RED), Canvas::new(2, 5, GREEN));
        let r = row(&[("A", a), ("", b)], 1, BLACK);
        assert_eq!((r.width, r.height), (4 + 1 + 2, 18 + 5));
        assert_eq!(r.pixels[18 * 7], RED); // first panel's top-left, under the label band
        assert_eq!(r.pixels[18 * 7 + 5], GREEN); // second panel after the 1-pixel gap
        assert_eq!(r.pixels[(18 + 4) * 7], BLACK); // below the shorter first panel
        assert_eq!(r.pixels[18 * 7 + 4], BLACK); // the gap
        let unlabelled = row(&[("", Canvas::new(2, 2, RED))], 0, BLACK);
        assert_eq!(unlabelled.height, 2);
    }

    #[test]
    fn overlay_outlines_truth_red_and_prediction_green() {
        // A 5×5 image with a 3×3 truth square; the prediction is its centre pixel only.
        let image: Vec<f32> = (0..25).map(|i| i as f32).collect();
        let mut truth = vec![0u8; 25];
        for y in 1..4 {
            for x in 1..4 {
                truth[y * 5 + x] = 1;
            }
        }
        let mut prediction = vec![0u8; 25];
        prediction[12] = 1;
        let c = overlay(&image, Some(&truth), &prediction, 5, 5, 1);
        assert_eq!(c.pixels[6], RED); // (1, 1): edge of the truth square
        assert_eq!(c.pixels[12], GREEN); // the isolated predicted pixel is its own outline
        assert_eq!(c.pixels[0], [0, 0, 0]); // darkest pixel, windowed to black
        assert_eq!(c.pixels[24], [255, 255, 255]);
    }

    #[test]
    fn lines_and_text_land_where_asked() {
        let mut c = Canvas::new(10, 10, WHITE);
        c.line((0, 0), (9, 9), 1, BLACK);
        assert!((0..10).all(|i| c.pixels[i * 10 + i] == BLACK));
        assert_eq!(c.pixels.iter().filter(|p| **p == BLACK).count(), 10);
        let mut t = Canvas::new(8, 5, WHITE);
        t.text(0, 0, "1-", 1, BLACK);
        // '1' is .#. / ##. / .#. / .#. / ###; '-' is the middle row of the next cell.
        let on = |x: usize, y: usize| t.pixels[y * 8 + x] == BLACK;
        assert!(on(1, 0) && on(0, 1) && on(1, 1) && on(0, 4) && on(2, 4) && !on(0, 0));
        assert!(on(4, 2) && on(5, 2) && on(6, 2) && !on(4, 1));
        assert_eq!(Canvas::text_width("1-", 1), 7);
    }
}
