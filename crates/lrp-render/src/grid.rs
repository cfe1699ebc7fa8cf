//! A montage of images with captions, on a white background.

use font8x8::legacy::BASIC_LEGACY;

use crate::{RenderError, Rgb};

/// One image of a [`grid`] and the caption lines drawn under it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tile {
    /// The image.
    pub image: Rgb,
    /// The caption, one entry per line, drawn under the image.
    pub caption: Vec<String>,
}

impl Tile {
    /// A tile of `image` with `caption` lines.
    pub fn new(image: Rgb, caption: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Tile {
            image,
            caption: caption.into_iter().map(Into::into).collect(),
        }
    }
}

/// White space around and between cells, in pixels.
pub const GRID_GAP: usize = 4;
/// Width and height of one caption character, in pixels.
pub const GLYPH_SIZE: usize = 8;
/// Height of one caption line (a glyph and 2 pixels of spacing), in pixels.
pub const LINE_HEIGHT: usize = GLYPH_SIZE + 2;
/// White space between the image area of a cell and its first caption line, in pixels.
const TEXT_GAP: usize = 2;

const WHITE: [u8; 3] = [255; 3];
const BLACK: [u8; 3] = [0; 3];

/// Three dots, marking a caption line cut short.
const ELLIPSIS: [u8; 8] = [0, 0, 0, 0, 0, 0xDB, 0xDB, 0];

/// The 8×8 glyph of `c` (rows top-down, bit 0 the leftmost pixel); `?` for a character that is
/// not printable ASCII.
fn glyph(c: char) -> [u8; 8] {
    let c = if c == ' ' || c.is_ascii_graphic() {
        c
    } else {
        '?'
    };
    BASIC_LEGACY[c as usize]
}

/// A montage of `tiles`, `columns` to a row (fewer when there are fewer tiles), row by row, on
/// white.
///
/// Every cell has the width of the widest tile and the height of the tallest plus room for the
/// longest caption; each image is centred in its cell's image area, and its caption lines
/// ([`GLYPH_SIZE`]-pixel black text from the public-domain `font8x8` glyphs, [`LINE_HEIGHT`]
/// apart) are centred under that area. A character that is not printable ASCII draws as `?`; a
/// line wider than the cell is cut to fit and ends in three dots. Cells are [`GRID_GAP`] pixels
/// apart and from the border. An error when `tiles` is empty, `columns` is 0 or the size
/// overflows.
pub fn grid(tiles: &[Tile], columns: usize) -> Result<Rgb, RenderError> {
    if tiles.is_empty() {
        return Err(RenderError::EmptyGrid);
    }
    if columns == 0 {
        return Err(RenderError::ZeroColumns);
    }
    let cols = columns.min(tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let cell_w = tiles.iter().map(|t| t.image.width()).max().unwrap_or(0);
    let image_h = tiles.iter().map(|t| t.image.height()).max().unwrap_or(0);
    let lines = tiles.iter().map(|t| t.caption.len()).max().unwrap_or(0);
    let too_large = || RenderError::TooLarge {
        width: cell_w,
        height: image_h,
    };
    let text_h = if lines == 0 {
        0
    } else {
        lines
            .checked_mul(LINE_HEIGHT)
            .and_then(|h| h.checked_add(TEXT_GAP))
            .ok_or_else(too_large)?
    };
    let cell_h = image_h.checked_add(text_h).ok_or_else(too_large)?;
    let span = |n: usize, cell: usize| {
        n.checked_mul(cell.checked_add(GRID_GAP)?)?
            .checked_add(GRID_GAP)
    };
    let width = span(cols, cell_w).ok_or_else(too_large)?;
    let height = span(rows, cell_h).ok_or_else(too_large)?;
    let mut out = Rgb::filled(width, height, WHITE)?;
    for (i, tile) in tiles.iter().enumerate() {
        let x0 = GRID_GAP + (i % cols) * (cell_w + GRID_GAP);
        let y0 = GRID_GAP + (i / cols) * (cell_h + GRID_GAP);
        let img = &tile.image;
        out.blit(
            img,
            x0 + (cell_w - img.width()) / 2,
            y0 + (image_h - img.height()) / 2,
        );
        for (l, line) in tile.caption.iter().enumerate() {
            let y = y0 + image_h + TEXT_GAP + l * LINE_HEIGHT;
            draw_line(&mut out, line, x0, y, cell_w);
        }
    }
    Ok(out)
}

/// Draws `line` in black, centred in the `width` pixels from `x0`, its top at `y`; cut to fit
/// with a trailing ellipsis.
fn draw_line(out: &mut Rgb, line: &str, x0: usize, y: usize, width: usize) {
    let fit = width / GLYPH_SIZE;
    let mut glyphs: Vec<[u8; 8]> = line.chars().map(glyph).collect();
    if glyphs.len() > fit {
        glyphs.truncate(fit.saturating_sub(1));
        if fit > 0 {
            glyphs.push(ELLIPSIS);
        }
    }
    let x = x0 + (width - glyphs.len() * GLYPH_SIZE) / 2;
    for (k, g) in glyphs.iter().enumerate() {
        for (dy, bits) in g.iter().enumerate() {
            for dx in 0..GLYPH_SIZE {
                if bits & (1 << dx) != 0 {
                    out.set_pixel(x + k * GLYPH_SIZE + dx, y + dy, BLACK);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(w: usize, h: usize, caption: &[&str]) -> Tile {
        Tile::new(
            Rgb::filled(w, h, [255, 0, 0]).unwrap(),
            caption.iter().copied(),
        )
    }

    fn is_dark(p: [u8; 3]) -> bool {
        p.iter().all(|&c| c < 64)
    }

    /// The number of dark pixels in the rectangle at (x, y) of size w × h.
    fn dark(img: &Rgb, x: usize, y: usize, w: usize, h: usize) -> usize {
        (y..y + h)
            .flat_map(|yy| (x..x + w).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| is_dark(img.pixel(xx, yy).unwrap()))
            .count()
    }

    #[test]
    fn grid_size() {
        // Cells 10 wide (widest tile), 12 + 2 + 2 · 10 = 34 tall (tallest tile, two caption
        // lines); 3 tiles in 2 columns make 2 rows.
        let tiles = [
            tile(10, 8, &["a"]),
            tile(6, 12, &["b", "c"]),
            tile(4, 4, &[]),
        ];
        let g = grid(&tiles, 2).unwrap();
        assert_eq!((g.width(), g.height()), (2 * 10 + 3 * 4, 2 * 34 + 3 * 4));
        // More columns than tiles: one row of 3.
        let g = grid(&tiles, 10).unwrap();
        assert_eq!((g.width(), g.height()), (3 * 10 + 4 * 4, 34 + 2 * 4));
        // No captions: no text area.
        let g = grid(&[tile(5, 7, &[])], 1).unwrap();
        assert_eq!((g.width(), g.height()), (13, 15));
        // The image sits at the gap, the rest is white.
        assert_eq!(g.pixel(4, 4), Some([255, 0, 0]));
        assert_eq!(g.pixel(3, 4), Some([255, 255, 255]));
        assert_eq!(g.pixel(9, 11), Some([255, 255, 255]));
    }

    #[test]
    fn caption_pixels_are_dark() {
        // One 16-wide tile: the caption "H" is centred, at x = 4 + 4, y = 4 + 8 + 2.
        let g = grid(&[tile(16, 8, &["H"])], 1).unwrap();
        let want: u32 = BASIC_LEGACY['H' as usize]
            .iter()
            .map(|b| b.count_ones())
            .sum();
        assert_eq!(want, 30);
        assert_eq!(dark(&g, 8, 14, 8, 8) as u32, want);
        assert_eq!(dark(&g, 0, 0, g.width(), g.height()) as u32, want);
        // The top-left of 'H' (bits 0 and 1 of row 0) is set.
        assert!(is_dark(g.pixel(8, 14).unwrap()));
        assert!(!is_dark(g.pixel(10, 14).unwrap()));
    }

    #[test]
    fn non_ascii_draws_a_question_mark() {
        let a = grid(&[tile(16, 4, &["é"])], 1).unwrap();
        let b = grid(&[tile(16, 4, &["?"])], 1).unwrap();
        assert_eq!(a, b);
        assert!(dark(&a, 0, 0, a.width(), a.height()) > 0);
    }

    #[test]
    fn long_captions_are_cut() {
        // 16 pixels hold two glyphs: "A" then the ellipsis.
        let g = grid(&[tile(16, 4, &["ABCDEFGH"])], 1).unwrap();
        let want = grid(&[tile(16, 4, &["A?"])], 1).unwrap();
        assert_eq!(dark(&g, 4, 10, 8, 8), dark(&want, 4, 10, 8, 8));
        let dots: u32 = ELLIPSIS.iter().map(|b| b.count_ones()).sum();
        assert_eq!(dark(&g, 12, 10, 8, 8) as u32, dots);
        // Too narrow for a single glyph: nothing is drawn, nothing panics.
        let g = grid(&[tile(5, 4, &["ABC"]), tile(0, 0, &["x"])], 2).unwrap();
        assert_eq!(dark(&g, 0, 0, g.width(), g.height()), 0);
    }

    #[test]
    fn errors() {
        assert_eq!(grid(&[], 3), Err(RenderError::EmptyGrid));
        assert_eq!(grid(&[tile(1, 1, &[])], 0), Err(RenderError::ZeroColumns));
        // Zero-height images may claim any width; two of them overflow the montage's width.
        let wide = Tile::new(Rgb::new(usize::MAX / 2, 0, Vec::new()).unwrap(), ["x"]);
        assert!(matches!(
            grid(&[wide.clone(), wide], 2),
            Err(RenderError::TooLarge { .. })
        ));
    }
}
