//! The paid path's validate phase (policy half): is this base64 string a real JPEG/PNG/WEBP image?
//!
//! Works on the string borrowed from the request body. The size bound comes from the length
//! alone, validity from one SIMD scan (no output), and format and dimensions from decoding only a
//! prefix; the whole payload is decoded only for images whose header lies deep in the file.

use imagesize::ImageError as SizeError;

/// Decoded bytes examined for the header. JPEG's size marker follows the EXIF/ICC segments,
/// which are usually well under this.
const HEADER_PREFIX_BYTES: usize = 64 * 1024;

/// What an image may be: its decoded size, and the dimensions its header declares (a
/// decompression bomb is a small file that declares a huge canvas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Decoded bytes.
    pub max_bytes: usize,
    /// Pixels across.
    pub max_width: usize,
    /// Pixels down.
    pub max_height: usize,
    /// Width × height.
    pub max_pixels: usize,
}

impl ImageLimits {
    /// Default largest side: well above any camera or generated image in use (8K is 7680).
    pub const DEFAULT_SIDE: usize = 8192;
    /// Default largest area: 40 megapixels.
    pub const DEFAULT_PIXELS: usize = 40_000_000;

    /// The default dimensions with a size cap.
    pub fn bytes(max_bytes: usize) -> ImageLimits {
        ImageLimits {
            max_bytes,
            max_width: Self::DEFAULT_SIDE,
            max_height: Self::DEFAULT_SIDE,
            max_pixels: Self::DEFAULT_PIXELS,
        }
    }
}

/// An accepted image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/jpeg`
    Jpeg,
    /// `image/png`
    Png,
    /// `image/webp`
    Webp,
}

/// What was learnt from a valid image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Detected from the magic bytes.
    pub format: ImageFormat,
    /// Pixels.
    pub width: usize,
    /// Pixels.
    pub height: usize,
    /// Size of the decoded file in bytes.
    pub decoded_len: usize,
}

/// Why a base64 image was refused. Messages go to the client after the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Empty string or empty data URL payload.
    #[error("is empty")]
    Empty,
    /// `data:` URL that is not `data:image/<jpeg|png|webp>;base64,`.
    #[error("data URL must look like data:image/<jpeg|png|webp>;base64,<data>")]
    BadDataUrl,
    /// Not strict, padded, standard-alphabet base64.
    #[error("is not valid base64")]
    InvalidBase64,
    /// Decoded size over the cap.
    #[error("decodes to {decoded} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Decoded bytes.
        decoded: usize,
        /// Limit.
        max: usize,
    },
    /// Magic bytes are not JPEG, PNG or WEBP.
    #[error("must be a JPEG, PNG or WEBP image")]
    UnsupportedFormat,
    /// Data URL says one format, bytes say another.
    #[error("declared {declared:?} but the data is {actual:?}")]
    FormatMismatch {
        /// From the data URL.
        declared: ImageFormat,
        /// From the magic bytes.
        actual: ImageFormat,
    },
    /// Magic bytes fine, header unreadable.
    #[error("has an unreadable {0:?} header")]
    Unreadable(ImageFormat),
    /// Header says 0×N or N×0.
    #[error("has zero width or height")]
    ZeroDimensions,
    /// Header declares a side over the limit.
    #[error("is {width}x{height} pixels, over the {max_width}x{max_height} limit")]
    TooWide {
        /// Declared.
        width: usize,
        /// Declared.
        height: usize,
        /// Limit.
        max_width: usize,
        /// Limit.
        max_height: usize,
    },
    /// Header declares more pixels than allowed.
    #[error("is {width}x{height} = {pixels} pixels, over the {max} pixel limit")]
    TooManyPixels {
        /// Declared.
        width: usize,
        /// Declared.
        height: usize,
        /// width × height.
        pixels: usize,
        /// Limit.
        max: usize,
    },
    /// A PNG whose header chunk fails its CRC (corrupt, or edited to lie).
    #[error("has a PNG header chunk (IHDR) whose CRC does not match")]
    BadChecksum,
    /// A second IHDR (PNG) or frame header (JPEG): the size checked would not be the one a
    /// decoder that reads the other uses.
    #[error("has more than one {0:?} header")]
    RepeatedHeader(ImageFormat),
}

/// The decoded bytes of strict base64 `b64`, read at growing positions (a walk over chunk or
/// segment headers): from `prefix` (already decoded) where it has them, else from a window
/// decoded on demand. Where headers are close together the window is large, so each part of
/// the payload is decoded at most once (a PNG of a million empty chunks costs one decode of the
/// file, not a million small ones); where they are far apart only the few bytes asked for are.
struct Decoded<'a> {
    b64: &'a [u8],
    prefix: &'a [u8],
    start: usize,
    window: Vec<u8>,
    last_at: usize,
}

/// Bytes decoded at once where headers are close together (a multiple of 3).
const WINDOW: usize = 48 * 1024;

impl<'a> Decoded<'a> {
    fn new(b64: &'a [u8], prefix: &'a [u8]) -> Self {
        Decoded { b64, prefix, start: 0, window: Vec::new(), last_at: 0 }
    }

    /// Bytes `at..at + n` (fewer at the end of the payload).
    fn get(&mut self, at: usize, n: usize) -> Option<&[u8]> {
        let dense = at.saturating_sub(self.last_at) < WINDOW / 16;
        self.last_at = at;
        if at + n <= self.prefix.len() {
            return Some(&self.prefix[at..at + n]);
        }
        if at < self.start || at + n > self.start + self.window.len() {
            let start = at / 3 * 3;
            let want = if dense { WINDOW.max(n + 3) } else { n + 3 };
            let (first, last) = (start / 3 * 4, ((start + want).div_ceil(3) * 4).min(self.b64.len()));
            if first >= last {
                return None;
            }
            self.window = decode(&self.b64[first..last]).ok()?;
            self.start = start;
        }
        let d = self.window.get(at - self.start..)?;
        Some(&d[..n.min(d.len())])
    }
}

/// Most chunks or segments walked: far more than any real image has.
const MAX_WALK: usize = 1 << 20;

/// Walks a PNG's chunk list to IEND (a few bytes decoded per chunk): one IHDR only.
fn png_single_header(b64: &[u8], prefix: &[u8], len: usize) -> Result<(), ImageError> {
    let mut bytes = Decoded::new(b64, prefix);
    // signature (8) and the first chunk, IHDR (4 + 4 + 13 + 4).
    let mut at = 33usize;
    for _ in 0..MAX_WALK {
        let Some(head) = bytes.get(at, 8).filter(|h| h.len() == 8) else { return Ok(()) };
        match &head[4..8] {
            b"IHDR" => return Err(ImageError::RepeatedHeader(ImageFormat::Png)),
            b"IEND" => return Ok(()),
            _ => {}
        }
        let chunk = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        at = match at.checked_add(12 + chunk) {
            Some(next) if next < len => next,
            _ => return Ok(()),
        };
    }
    Ok(())
}

/// Walks a JPEG's marker segments up to its first scan: one frame header (SOFn) only. The frame
/// header must come before the scan, which is where decoders take the canvas size from.
fn jpeg_single_frame(b64: &[u8], prefix: &[u8], len: usize) -> Result<(), ImageError> {
    let mut bytes = Decoded::new(b64, prefix);
    let mut at = 2usize;
    let mut frames = 0;
    for _ in 0..MAX_WALK {
        let Some(m) = bytes.get(at, 4).filter(|m| m.len() >= 2 && m[0] == 0xFF) else { return Ok(()) };
        let marker = m[1];
        match marker {
            // Fill byte, then standalone markers (no length).
            0xFF => at += 1,
            0x01 | 0xD0..=0xD7 => at += 2,
            // End of image, start of scan: the frame header is behind us.
            0xD9 | 0xDA => return Ok(()),
            _ => {
                let Some(&[hi, lo]) = m.get(2..4).and_then(|l| <&[u8; 2]>::try_from(l).ok()) else {
                    return Ok(());
                };
                if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                    frames += 1;
                    if frames > 1 {
                        return Err(ImageError::RepeatedHeader(ImageFormat::Jpeg));
                    }
                }
                at += 2 + u16::from_be_bytes([hi, lo]) as usize;
            }
        }
        if at >= len {
            return Ok(());
        }
    }
    Ok(())
}

/// A PNG's first chunk must be IHDR with a CRC that matches its type and data.
fn png_header_ok(decoded: &[u8]) -> bool {
    // signature (8) | length (4) = 13 | "IHDR" | 13 bytes | CRC (4)
    let Some(chunk) = decoded.get(8..33) else { return false };
    if chunk[..4] != [0, 0, 0, 13] || &chunk[4..8] != b"IHDR" {
        return false;
    }
    crc32fast::hash(&chunk[4..21]).to_be_bytes() == chunk[21..25]
}

fn declared_format(media_type: &str) -> Option<ImageFormat> {
    match media_type.to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        "image/webp" => Some(ImageFormat::Webp),
        _ => None,
    }
}

/// Splits an optional `data:image/...;base64,` prefix off the payload.
fn split_data_url(s: &str) -> Result<(Option<ImageFormat>, &str), ImageError> {
    let Some(rest) = s.strip_prefix("data:") else {
        return Ok((None, s));
    };
    let (header, payload) = rest.split_once(',').ok_or(ImageError::BadDataUrl)?;
    let media_type = header.strip_suffix(";base64").ok_or(ImageError::BadDataUrl)?;
    let format = declared_format(media_type).ok_or(ImageError::BadDataUrl)?;
    Ok((Some(format), payload))
}

/// Format from the magic bytes alone (imagesize wants more than the signature to name one).
fn sniff(decoded: &[u8]) -> Result<ImageFormat, ImageError> {
    if decoded.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(ImageFormat::Jpeg)
    } else if decoded.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Ok(ImageFormat::Png)
    } else if decoded.len() >= 12 && &decoded[..4] == b"RIFF" && &decoded[8..12] == b"WEBP" {
        Ok(ImageFormat::Webp)
    } else {
        Err(ImageError::UnsupportedFormat)
    }
}

/// Decoded length of strict padded base64, from its length and padding alone.
fn decoded_len(b64: &[u8]) -> Result<usize, ImageError> {
    if b64.len() % 4 != 0 {
        return Err(ImageError::InvalidBase64);
    }
    let pad = b64.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    Ok(b64.len() / 4 * 3 - pad)
}

/// Validates a raw base64 string or a `data:` URL holding a JPEG, PNG or WEBP image of at most
/// `max_decoded` bytes.
pub fn check_base64_image(s: &str, limits: &ImageLimits) -> Result<ImageInfo, ImageError> {
    check_base64_image_marked(s, limits, |_| false)
}

/// As `check_base64_image`, told by `alphabet_only` whether the base64 payload is known to hold
/// only alphabet bytes apart from up to two `=` at its end (from the body's scan marks). Such a
/// payload can only be invalid in its last quantum, so only that is checked.
pub fn check_base64_image_marked(
    s: &str,
    limits: &ImageLimits,
    alphabet_only: impl Fn(&[u8]) -> bool,
) -> Result<ImageInfo, ImageError> {
    let max_decoded = limits.max_bytes;
    let (declared, payload) = split_data_url(s)?;
    let b64 = payload.as_bytes();
    if b64.is_empty() {
        return Err(ImageError::Empty);
    }
    // Cheapest refusal first: the size bound needs only the length.
    let decoded = decoded_len(b64)?;
    if decoded > max_decoded {
        return Err(ImageError::TooLarge { decoded, max: max_decoded });
    }
    // Strict base64 decodes each quantum of 4 on its own, and only the last may be padded.
    let unchecked = if alphabet_only(b64) { &b64[b64.len() - 4..] } else { b64 };
    base64_simd::STANDARD.check(unchecked).map_err(|_| ImageError::InvalidBase64)?;

    // A prefix of whole quanta never contains padding, so it decodes on its own.
    let prefix_chars = (HEADER_PREFIX_BYTES / 3) * 4;
    let mut header = if b64.len() > prefix_chars { decode(&b64[..prefix_chars])? } else { decode(b64)? };
    let format = sniff(&header)?;
    if let Some(declared) = declared {
        if declared != format {
            return Err(ImageError::FormatMismatch { declared, actual: format });
        }
    }
    let size = match imagesize::blob_size(&header) {
        Ok(size) => size,
        // The header runs past the prefix (large metadata): decode everything once.
        Err(SizeError::IoError(_)) | Err(SizeError::CorruptedImage) if b64.len() > prefix_chars => {
            header = decode(b64)?;
            imagesize::blob_size(&header).map_err(|_| ImageError::Unreadable(format))?
        }
        Err(_) => return Err(ImageError::Unreadable(format)),
    };
    if size.width == 0 || size.height == 0 {
        return Err(ImageError::ZeroDimensions);
    }
    if format == ImageFormat::Png && !png_header_ok(&header) {
        return Err(ImageError::BadChecksum);
    }
    match format {
        ImageFormat::Png => png_single_header(b64, &header, decoded)?,
        ImageFormat::Jpeg => jpeg_single_frame(b64, &header, decoded)?,
        ImageFormat::Webp => {}
    }
    let (width, height) = (size.width, size.height);
    if width > limits.max_width || height > limits.max_height {
        return Err(ImageError::TooWide { width, height, max_width: limits.max_width, max_height: limits.max_height });
    }
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels { width, height, pixels, max: limits.max_pixels });
    }
    Ok(ImageInfo { format, width: size.width, height: size.height, decoded_len: decoded })
}

fn decode(b64: &[u8]) -> Result<Vec<u8>, ImageError> {
    base64_simd::STANDARD.decode_to_vec(b64).map_err(|_| ImageError::InvalidBase64)
}

/// Test and bench fixtures: tiny but well-formed images.
pub mod fixtures {
    /// A PNG of `w`×`h` pixels (header only plus an IEND; enough for header checks), padded with
    /// an ancillary chunk to at least `min_len` bytes.
    pub fn png(w: u32, h: u32, min_len: usize) -> Vec<u8> {
        let mut v = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        v.extend_from_slice(&13u32.to_be_bytes());
        v.extend_from_slice(b"IHDR");
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 6, 0, 0, 0]);
        let crc = crc32fast::hash(&v[12..29]);
        v.extend_from_slice(&crc.to_be_bytes());
        let pad = min_len.saturating_sub(v.len() + 12 + 12);
        if pad > 0 {
            v.extend_from_slice(&(pad as u32).to_be_bytes());
            v.extend_from_slice(b"tEXt");
            let start = v.len() - 4;
            v.extend(std::iter::repeat_n(b'a', pad));
            let crc = crc32fast::hash(&v[start..]);
            v.extend_from_slice(&crc.to_be_bytes());
        }
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(b"IEND");
        v.extend_from_slice(&[0xAE, 0x42, 0x60, 0x82]);
        v
    }

    /// A baseline JPEG header of `w`×`h` with `app_len` bytes of APP1 metadata before the frame
    /// header (pushes the size marker deep into the file).
    pub fn jpeg(w: u16, h: u16, app_len: usize) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
        let mut left = app_len;
        while left > 0 {
            let chunk = left.min(65_000);
            v.extend_from_slice(&[0xFF, 0xE1]);
            v.extend_from_slice(&((chunk + 2) as u16).to_be_bytes());
            v.extend(std::iter::repeat_n(0u8, chunk));
            left -= chunk;
        }
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    /// A lossy WEBP (VP8) header of `w`×`h`.
    pub fn webp(w: u16, h: u16) -> Vec<u8> {
        let mut vp8 = vec![0x9d, 0x01, 0x2a];
        // 3-byte frame tag precedes the start code.
        let mut frame = vec![0x10, 0x02, 0x00];
        frame.append(&mut vp8);
        frame.extend_from_slice(&w.to_le_bytes());
        frame.extend_from_slice(&h.to_le_bytes());
        frame.extend_from_slice(&[0; 10]);
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&((4 + 8 + frame.len()) as u32).to_le_bytes());
        v.extend_from_slice(b"WEBP");
        v.extend_from_slice(b"VP8 ");
        v.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        v.extend_from_slice(&frame);
        v
    }

    /// Standard padded base64.
    pub fn b64(bytes: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn accepts_png_jpeg_webp_raw_and_data_url() {
        let png_s = b64(&png(640, 480, 0));
        let info = check_base64_image(&png_s, &ImageLimits::bytes(10 * MIB)).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Png, 640, 480));
        let jpg = format!("data:image/jpeg;base64,{}", b64(&jpeg(300, 200, 10)));
        let info = check_base64_image(&jpg, &ImageLimits::bytes(10 * MIB)).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Jpeg, 300, 200));
        let webp = format!("data:image/webp;base64,{}", b64(&webp(64, 32)));
        let info = check_base64_image(&webp, &ImageLimits::bytes(10 * MIB)).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Webp, 64, 32));
    }

    #[test]
    fn a_second_header_is_refused_wherever_it_is() {
        // PNG: 64x64, then a second IHDR declaring 60000x60000 (near, and past the prefix).
        for pad in [0, 200_000] {
            let mut v = png(64, 64, pad);
            let iend = v.len() - 12;
            let second = png(60_000, 60_000, 0)[8..33].to_vec();
            v.splice(iend..iend, second);
            assert_eq!(
                check_base64_image(&b64(&v), &ImageLimits::bytes(10 * MIB)),
                Err(ImageError::RepeatedHeader(ImageFormat::Png)),
                "pad {pad}"
            );
        }
        // JPEG: 100x100, then a second SOF of 60000x60000 before the scan.
        for app in [10, 200_000] {
            let mut v = jpeg(100, 100, app);
            let eoi = v.len() - 2;
            let second = jpeg(60_000, 60_000, 0);
            let sof = second.len() - 2 - 19;
            v.splice(eoi..eoi, second[sof..second.len() - 2].to_vec());
            assert_eq!(
                check_base64_image(&b64(&v), &ImageLimits::bytes(10 * MIB)),
                Err(ImageError::RepeatedHeader(ImageFormat::Jpeg)),
                "app {app}"
            );
        }
        // One header each, however large the file: accepted.
        assert!(check_base64_image(&b64(&png(64, 64, 300_000)), &ImageLimits::bytes(10 * MIB)).is_ok());
        assert!(check_base64_image(&b64(&jpeg(64, 64, 300_000)), &ImageLimits::bytes(10 * MIB)).is_ok());
    }

    #[test]
    fn a_walk_over_many_tiny_chunks_finds_a_late_second_header() {
        // 100,000 empty ancillary chunks after the first IHDR, then a second IHDR: the walk
        // reads them through windows, and still sees the last one.
        let mut v = png(64, 64, 0);
        let iend = v.len() - 12;
        let mut tiny = Vec::new();
        for _ in 0..100_000 {
            tiny.extend_from_slice(&[0, 0, 0, 0]);
            tiny.extend_from_slice(b"tEXt");
            tiny.extend_from_slice(&crc32fast::hash(b"tEXt").to_be_bytes());
        }
        let mut bad = v.clone();
        bad.splice(iend..iend, tiny.iter().copied().chain(png(60_000, 60_000, 0)[8..33].iter().copied()));
        assert_eq!(
            check_base64_image(&b64(&bad), &ImageLimits::bytes(10 * MIB)),
            Err(ImageError::RepeatedHeader(ImageFormat::Png))
        );
        v.splice(iend..iend, tiny);
        assert!(check_base64_image(&b64(&v), &ImageLimits::bytes(10 * MIB)).is_ok());
    }

    #[test]
    fn reads_jpeg_header_beyond_the_prefix() {
        let s = b64(&jpeg(1920, 1080, 200_000));
        let info = check_base64_image(&s, &ImageLimits::bytes(10 * MIB)).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
    }

    #[test]
    fn size_is_exact_and_bounded() {
        let bytes = png(10, 10, 4096);
        let s = b64(&bytes);
        assert_eq!(check_base64_image(&s, &ImageLimits::bytes(bytes.len())).unwrap().decoded_len, bytes.len());
        assert_eq!(
            check_base64_image(&s, &ImageLimits::bytes(bytes.len() - 1)),
            Err(ImageError::TooLarge { decoded: bytes.len(), max: bytes.len() - 1 })
        );
    }

    #[test]
    fn refuses_each_kind_of_bad_input() {
        let good = b64(&png(1, 1, 0));
        let cases: Vec<(String, ImageError)> = vec![
            (String::new(), ImageError::Empty),
            ("data:image/png;base64,".into(), ImageError::Empty),
            ("data:text/plain;base64,QUJD".into(), ImageError::BadDataUrl),
            (format!("data:image/png,{good}"), ImageError::BadDataUrl),
            ("data:image/png;base64".into(), ImageError::BadDataUrl),
            ("QUJD*A==".into(), ImageError::InvalidBase64),
            ("QUJ".into(), ImageError::InvalidBase64),
            (format!("{good} "), ImageError::InvalidBase64),
            (b64(&png(1, 1, 100)).replace('=', ""), ImageError::InvalidBase64),
            (b64(b"GIF89a\x01\x00\x01\x00"), ImageError::UnsupportedFormat),
            (b64(b"hello world, not an image"), ImageError::UnsupportedFormat),
            (b64(&png(0, 5, 0)), ImageError::ZeroDimensions),
            (b64(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0]), ImageError::Unreadable(ImageFormat::Png)),
            (
                format!("data:image/jpeg;base64,{good}"),
                ImageError::FormatMismatch { declared: ImageFormat::Jpeg, actual: ImageFormat::Png },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(check_base64_image(&input, &ImageLimits::bytes(10 * MIB)), Err(want), "{input:.40}");
        }
    }

    #[test]
    fn ten_mib_image_passes_and_one_byte_more_fails() {
        let bytes = png(4000, 3000, 10 * MIB);
        assert_eq!(bytes.len(), 10 * MIB);
        let s = b64(&bytes);
        assert!(check_base64_image(&s, &ImageLimits::bytes(10 * MIB)).is_ok());
        let bigger = b64(&png(4000, 3000, 10 * MIB + 1));
        assert!(matches!(check_base64_image(&bigger, &ImageLimits::bytes(10 * MIB)), Err(ImageError::TooLarge { .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// Checking only the last quantum of a payload the scan found clean decides as the
        /// whole check does. The images are longer than the decoded prefix, so the check, not
        /// the prefix's decode, is what would catch a bad byte.
        #[test]
        fn marks_change_nothing_but_speed(len in 70_000usize..70_010, url in proptest::prelude::any::<bool>(), near_end in proptest::prelude::any::<bool>(),
                                          at in proptest::prelude::any::<usize>(), byte in 0u8..128, how in 0u8..4) {
            let payload = b64(&png(64, 48, len));
            let mut body = format!("{{\"image\":\"{}{payload}\"}}", if url { "data:image/png;base64," } else { "" }).into_bytes();
            let start = body.len() - payload.len() - 2;
            let i = if near_end { body.len() - 2 - at % 6 } else { start + at % payload.len() };
            match how {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                2 => body.insert(i, byte),
                _ => {}
            }
            let marks = crate::policy::scan::Marks::of_whole(&body).expect("an image body has few marks");
            let s = std::str::from_utf8(&body[10..body.len() - 2]).unwrap();
            let marked = check_base64_image_marked(s, &ImageLimits::bytes(10 * MIB), |p| marks.alphabet_only(&body, p));
            proptest::prop_assert_eq!(marked, check_base64_image(s, &ImageLimits::bytes(10 * MIB)));
        }
    }

    #[test]
    fn headers_that_declare_a_bomb_or_fail_their_crc_are_refused() {
        let l = ImageLimits::bytes(10 * MIB);
        let wide = |w: usize, h: usize| ImageError::TooWide { width: w, height: h, max_width: 8192, max_height: 8192 };
        assert_eq!(check_base64_image(&b64(&png(65535, 65535, 0)), &l), Err(wide(65535, 65535)));
        assert_eq!(
            check_base64_image(&b64(&png(i32::MAX as u32, i32::MAX as u32, 0)), &l),
            Err(wide(2147483647, 2147483647))
        );
        assert_eq!(check_base64_image(&b64(&jpeg(65500, 65500, 0)), &l), Err(wide(65500, 65500)));
        assert_eq!(check_base64_image(&b64(&webp(16383, 16383)), &l), Err(wide(16383, 16383)));
        assert_eq!(
            check_base64_image(&b64(&png(8000, 8000, 0)), &l),
            Err(ImageError::TooManyPixels { width: 8000, height: 8000, pixels: 64_000_000, max: 40_000_000 })
        );
        let mut bad = png(64, 64, 0);
        bad[29] ^= 0xff;
        assert_eq!(check_base64_image(&b64(&bad), &l), Err(ImageError::BadChecksum));
        // Per family limits apply as set.
        let small = ImageLimits { max_width: 100, ..l };
        assert!(check_base64_image(&b64(&png(101, 10, 0)), &small).is_err());
        assert!(check_base64_image(&b64(&png(100, 10, 0)), &small).is_ok());
    }
}
