//! A minimal PNG writer (8-bit RGB, uncompressed deflate blocks): enough for frame strips, no dependency.

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes `rgb` (`width * height * 3` bytes, row-major) as a PNG file.
pub fn encode_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3, "rgb buffer size");
    let mut raw = Vec::with_capacity(height * (1 + width * 3));
    for row in rgb.chunks_exact(width * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Lays out latent clips `[F, C, H, W]` (one per row) as a strip of frames, channels 0..3 as R, G, B
/// mapped from [-1, 1] to [0, 255], each pixel scaled up `scale` times, with a 2-pixel gap.
pub fn strip(rows: &[&[f32]], frames: usize, channels: usize, h: usize, w: usize, scale: usize) -> (usize, usize, Vec<u8>) {
    let gap = 2;
    let (tw, th) = (w * scale, h * scale);
    let width = frames * tw + (frames + 1) * gap;
    let height = rows.len() * th + (rows.len() + 1) * gap;
    let mut img = vec![255u8; width * height * 3];
    for (r, clip) in rows.iter().enumerate() {
        for f in 0..frames {
            for y in 0..th {
                for x in 0..tw {
                    let (sy, sx) = (y / scale, x / scale);
                    let px = (gap + r * (th + gap) + y) * width + gap + f * (tw + gap) + x;
                    for c in 0..3 {
                        let v = if c < channels { clip[((f * channels + c) * h + sy) * w + sx] } else { 0.0 };
                        img[px * 3 + c] = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                    }
                }
            }
        }
    }
    (width, height, img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn encodes_a_valid_header() {
        let png = encode_rgb(2, 1, &[255, 0, 0, 0, 255, 0]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
