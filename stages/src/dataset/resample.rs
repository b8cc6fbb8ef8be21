//! PIL's antialiased bilinear resize, in integer arithmetic: the one
//! resampler behind image-folder preparation (torchvision's `Resize`) and
//! the training loader's random-resized crop (`RandomResizedCrop`, which
//! crops, then resizes the crop).
//!
//! Each axis is a triangle filter widened to the scale factor when it
//! shrinks, so a downscale averages every source pixel it covers. Taps stop
//! at the edge of the source window (PIL crops before it resizes). Weights
//! are 14-bit fixed point and sum to exactly 1, so a flat colour stays
//! exact and the bytes depend neither on floating-point contraction nor on
//! thread scheduling. Only the taps the output window needs are computed.

const CHANNELS: usize = 3;
const WEIGHT_BITS: u32 = 14;
pub(crate) const WEIGHT_ONE: i32 = 1 << WEIGHT_BITS;
/// Fractional bits kept between the two passes; with 14-bit weights the
/// vertical sums stay below 2^31.
const INTERMEDIATE_BITS: u32 = 8;

/// One axis of a resize: source pixels `lo..lo + len` (the window) are
/// scaled to `scaled` pixels, of which `offset..offset + out` are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub lo: usize,
    pub len: usize,
    pub scaled: usize,
    pub offset: usize,
    pub out: usize,
}

impl Axis {
    /// The whole source axis scaled to `scaled`, all of it written.
    pub fn whole(len: usize, scaled: usize) -> Axis {
        Axis {
            lo: 0,
            len,
            scaled,
            offset: 0,
            out: scaled,
        }
    }

    /// The whole source axis scaled to `scaled`, its central `out` pixels
    /// written (torchvision's `CenterCrop` offset).
    pub fn centred(len: usize, scaled: usize, out: usize) -> Axis {
        Axis {
            lo: 0,
            len,
            scaled,
            offset: centre_offset(scaled, out),
            out,
        }
    }

    /// Source pixels `lo..lo + len` resized to `out` (a crop, then a resize).
    pub fn window(lo: usize, len: usize, out: usize) -> Axis {
        Axis {
            lo,
            len,
            scaled: out,
            offset: 0,
            out,
        }
    }
}

/// torchvision's `Resize(size)` output for a `width x height` image: the
/// short side becomes `size`, the long side `int(size * long / short)`
/// (truncated, as torchvision does), returned as (width, height).
pub fn short_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let short = width.min(height);
    let scaled = |len: usize| {
        if len == short {
            size
        } else {
            len * size / short
        }
    };
    (scaled(width), scaled(height))
}

/// torchvision's `CenterCrop` offset: `round((len - size) / 2)`, half to
/// even (Python's `round`).
pub fn centre_offset(len: usize, size: usize) -> usize {
    ((len - size) as f64 / 2.0).round_ties_even() as usize
}

/// Triangle-filter taps of one axis for the output window.
#[derive(Default)]
pub(crate) struct AxisFilter {
    /// First source index of each output pixel's taps.
    pub(crate) first: Vec<usize>,
    /// Taps per output pixel; shorter spans are padded with zero weights.
    pub(crate) taps: usize,
    /// `taps` weights per output pixel, each row summing to `WEIGHT_ONE`.
    pub(crate) weights: Vec<i32>,
}

impl AxisFilter {
    pub(crate) fn plan(&mut self, a: Axis) {
        assert!(
            a.len > 0 && a.scaled > 0 && a.offset + a.out <= a.scaled,
            "resample axis {a:?}"
        );
        let ratio = a.len as f64 / a.scaled as f64;
        let support = ratio.max(1.0);
        let end = a.lo + a.len - 1;
        self.taps = ((2.0 * support).ceil() as usize + 1).min(a.len);
        self.first.clear();
        self.weights.clear();
        let mut real = Vec::with_capacity(self.taps);
        for o in 0..a.out {
            let centre = a.lo as f64 + ((a.offset + o) as f64 + 0.5) * ratio - 0.5;
            let lo = ((centre - support).ceil().max(a.lo as f64)) as usize;
            let hi = ((centre + support).floor() as usize).min(end);
            real.clear();
            real.extend((lo..=hi).map(|i| (1.0 - (i as f64 - centre).abs() / support).max(0.0)));
            let sum: f64 = real.iter().sum();
            let first = lo.min(end + 1 - self.taps);
            self.first.push(first);
            let row = self.weights.len();
            self.weights.resize(row + self.taps, 0);
            let mut total = 0;
            let mut largest = lo - first;
            for (k, w) in real.iter().enumerate() {
                let q = (w / sum * WEIGHT_ONE as f64).round() as i32;
                let slot = row + lo - first + k;
                self.weights[slot] = q;
                total += q;
                if q > self.weights[row + largest] {
                    largest = lo - first + k;
                }
            }
            // Rounding may miss 1.0 by a few units; the largest tap absorbs
            // it, so a flat colour maps to itself exactly.
            self.weights[row + largest] += WEIGHT_ONE - total;
        }
    }
}

/// Buffers one thread reuses from image to image.
#[derive(Default)]
pub struct Resampler {
    columns: AxisFilter,
    rows: AxisFilter,
    /// Source rows filtered vertically, `INTERMEDIATE_BITS` fractional bits,
    /// only the columns the output window needs.
    filtered: Vec<u16>,
    accumulator: Vec<i32>,
}

impl Resampler {
    /// Resizes RGB `src` (`width x height`, rows contiguous) along `x` and
    /// `y` into `out` (`y.out` rows of `x.out` RGB pixels).
    pub fn resize(
        &mut self,
        src: &[u8],
        width: usize,
        height: usize,
        x: Axis,
        y: Axis,
        out: &mut [u8],
    ) {
        assert!(x.lo + x.len <= width && y.lo + y.len <= height, "window");
        assert_eq!(src.len(), width * height * CHANNELS, "source size");
        assert_eq!(out.len(), x.out * y.out * CHANNELS, "output size");
        self.columns.plan(x);
        self.rows.plan(y);
        // Rows first: that pass runs over contiguous bytes and vectorises,
        // and it shrinks the image before the column pass, which cannot.
        let columns = &self.columns;
        let rows = &self.rows;
        let col_lo = columns.first[0];
        let col_hi = columns.first[x.out - 1] + columns.taps;
        let span = (col_hi - col_lo) * CHANNELS;
        let stride = width * CHANNELS;
        let down = WEIGHT_BITS - INTERMEDIATE_BITS;
        self.filtered.clear();
        self.filtered.resize(y.out * span, 0);
        let acc = &mut self.accumulator;
        let row_filters = rows.first.iter().zip(rows.weights.chunks_exact(rows.taps));
        for (dst, (&first, weights)) in self.filtered.chunks_exact_mut(span).zip(row_filters) {
            acc.clear();
            acc.resize(span, 1 << (down - 1));
            for (k, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                let start = (first + k) * stride + col_lo * CHANNELS;
                for (a, &v) in acc.iter_mut().zip(&src[start..start + span]) {
                    *a += w * i32::from(v);
                }
            }
            for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                *d = (a >> down) as u16;
            }
        }

        let shift = WEIGHT_BITS + INTERMEDIATE_BITS;
        let round = 1 << (shift - 1);
        for (src_row, dst) in self
            .filtered
            .chunks_exact(span)
            .zip(out.chunks_exact_mut(x.out * CHANNELS))
        {
            let pixels = dst
                .chunks_exact_mut(CHANNELS)
                .zip(&columns.first)
                .zip(columns.weights.chunks_exact(columns.taps));
            for ((px, &first), weights) in pixels {
                let start = (first - col_lo) * CHANNELS;
                let window = &src_row[start..start + columns.taps * CHANNELS];
                let (mut r, mut g, mut b) = (round, round, round);
                for (&w, s) in weights.iter().zip(window.chunks_exact(CHANNELS)) {
                    r += w * i32::from(s[0]);
                    g += w * i32::from(s[1]);
                    b += w * i32::from(s[2]);
                }
                px.copy_from_slice(&[(r >> shift) as u8, (g >> shift) as u8, (b >> shift) as u8]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resize(src: &[u8], w: usize, h: usize, x: Axis, y: Axis) -> Vec<u8> {
        let mut out = vec![0; x.out * y.out * 3];
        Resampler::default().resize(src, w, h, x, y, &mut out);
        out
    }

    fn ramp(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / (w - 1)) as u8, (y * 7) as u8, 9]))
            .collect()
    }

    #[test]
    fn torchvision_sizes_truncate_the_long_side_and_round_the_centre_half_to_even() {
        // 500x375 -> 341.33 -> 341; 375x500 likewise; a square stays square.
        assert_eq!(short_side_size(500, 375, 256), (341, 256));
        assert_eq!(short_side_size(375, 500, 256), (256, 341));
        assert_eq!(short_side_size(300, 300, 256), (256, 256));
        // 3 * 256 / 2 = 384 exactly; 299 * 256 / 200 = 382.72 -> 382.
        assert_eq!(short_side_size(300, 200, 256), (384, 256));
        assert_eq!(short_side_size(299, 200, 256), (382, 256));
        assert_eq!(centre_offset(341, 256), 42); // 42.5 -> 42
        assert_eq!(centre_offset(343, 256), 44); // 43.5 -> 44
        assert_eq!(centre_offset(256, 224), 16);
    }

    #[test]
    fn a_window_is_resized_alone_with_taps_clamped_at_its_edges() {
        // Cropping then resizing equals resizing the cropped copy: no tap
        // reads outside the window, as PIL crops before it resizes.
        let (w, h) = (40, 30);
        let src = ramp(w, h);
        let (left, top, cw, ch) = (7, 5, 21, 13);
        let mut crop = Vec::new();
        for y in top..top + ch {
            crop.extend_from_slice(&src[(y * w + left) * 3..(y * w + left + cw) * 3]);
        }
        for out in [4, 13, 50] {
            assert_eq!(
                resize(
                    &src,
                    w,
                    h,
                    Axis::window(left, cw, out),
                    Axis::window(top, ch, out)
                ),
                resize(
                    &crop,
                    cw,
                    ch,
                    Axis::window(0, cw, out),
                    Axis::window(0, ch, out)
                ),
                "out {out}"
            );
        }
    }

    #[test]
    fn an_identity_resize_copies_the_window() {
        let (w, h) = (12, 9);
        let src = ramp(w, h);
        let out = resize(&src, w, h, Axis::window(3, 5, 5), Axis::window(2, 4, 4));
        for y in 0..4 {
            assert_eq!(
                &out[y * 15..(y + 1) * 15],
                &src[((y + 2) * w + 3) * 3..((y + 2) * w + 8) * 3]
            );
        }
    }
}
