//! ggml's tensor types to f32, block by block, with the arithmetic of ggml's reference
//! dequantizers (and of transformers' GGUF loading, which the fixture script checks against):
//! every product and sum rounded to f32 in the same order.

use half::{bf16, f16};

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// `(elements, bytes)` of one block of a type.
fn block(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        F32 => (1, 4),
        F16 | BF16 => (1, 2),
        Q4_0 => (32, 18),
        Q4_1 => (32, 20),
        Q8_0 => (32, 34),
        Q4_K => (256, 144),
        Q5_K => (256, 176),
        Q6_K => (256, 210),
        _ => return None,
    })
}

/// The name of a ggml type, for messages.
pub fn type_name(ty: u32) -> String {
    match ty {
        F32 => "F32".into(),
        F16 => "F16".into(),
        BF16 => "BF16".into(),
        Q4_0 => "Q4_0".into(),
        Q4_1 => "Q4_1".into(),
        Q8_0 => "Q8_0".into(),
        Q4_K => "Q4_K".into(),
        Q5_K => "Q5_K".into(),
        Q6_K => "Q6_K".into(),
        6 => "Q5_0".into(),
        7 => "Q5_1".into(),
        10 => "Q2_K".into(),
        11 => "Q3_K".into(),
        other => format!("type {other}"),
    }
}

const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K";

/// Bytes of `numel` elements of type `ty`.
pub fn byte_size(ty: u32, numel: u64) -> Result<u64, String> {
    let (elems, bytes) = block(ty).ok_or_else(|| {
        format!(
            "ggml type {} is not supported (gradlens reads {SUPPORTED})",
            type_name(ty)
        )
    })?;
    if !numel.is_multiple_of(elems) {
        return Err(format!(
            "{numel} elements are not whole blocks of {elems} ({})",
            type_name(ty)
        ));
    }
    (numel / elems)
        .checked_mul(bytes)
        .ok_or_else(|| "size overflows".into())
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `raw` (of `numel` elements of type `ty`) as f32.
pub fn dequantize(ty: u32, raw: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let size = byte_size(ty, numel as u64)?;
    if raw.len() as u64 != size {
        return Err(format!("{} bytes, expected {size}", raw.len()));
    }
    let mut out = Vec::with_capacity(numel);
    match ty {
        F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4"))),
        ),
        F16 => out.extend(raw.chunks_exact(2).map(|b| half_at(b, 0))),
        BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = half_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = half_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i8 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i8 - 8) as f32));
            }
        }
        Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        Q4_K | Q5_K => {
            let width = if ty == Q4_K { 144 } else { 176 };
            for b in raw.chunks_exact(width) {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let (sc, mn) = k_scales(&b[4..16]);
                let (qh, qs) = if ty == Q4_K {
                    (None, &b[16..144])
                } else {
                    (Some(&b[16..48]), &b[48..176])
                };
                // Eight sub-blocks of 32: the low then the high nibbles of each 32 bytes; Q5_K's
                // fifth bit of sub-block j is bit j of qh.
                for j in 0..8 {
                    let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let scale = d * sc[j];
                    let min = dmin * mn[j];
                    for l in 0..32 {
                        let mut q = if j % 2 == 0 {
                            bytes[l] & 0xF
                        } else {
                            bytes[l] >> 4
                        };
                        if let Some(qh) = qh {
                            q |= ((qh[l] >> j) & 1) << 4;
                        }
                        out.push(scale * q as f32 - min);
                    }
                }
            }
        }
        Q6_K => {
            for b in raw.chunks_exact(210) {
                let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = half_at(b, 208);
                let mut y = [0f32; 256];
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
                    let sc = &scales[8 * n..8 * n + 8];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                        let s = |k: usize| d * (sc[k] as i8) as f32;
                        let base = 128 * n;
                        y[base + l] = s(is) * q1 as f32;
                        y[base + l + 32] = s(is + 2) * q2 as f32;
                        y[base + l + 64] = s(is + 4) * q3 as f32;
                        y[base + l + 96] = s(is + 6) * q4 as f32;
                    }
                }
                out.extend_from_slice(&y);
            }
        }
        _ => unreachable!("byte_size accepted the type"),
    }
    Ok(out)
}

/// The eight 6-bit scales and minimums of a Q4_K / Q5_K block (ggml's `get_scale_min_k4`).
fn k_scales(s: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let (a, b) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
        sc[j] = a as f32;
        mn[j] = b as f32;
    }
    (sc, mn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn simple_blocks_dequantize_by_their_formulas() {
        // Q8_0: d = 0.5, q = -3..28.
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 3) as u8));
        let v = dequantize(Q8_0, &b, 32).unwrap();
        assert_eq!(v[0], -1.5);
        assert_eq!(v[31], 14.0);
        // Q4_1: d = 0.25, m = -1, byte i = (hi 15 - i%16, lo i%16).
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize(Q4_1, &b, 32).unwrap();
        assert_eq!(v[3], 0.25 * 3.0 - 1.0);
        assert_eq!(v[16 + 3], 0.25 * 12.0 - 1.0);
        // Q4_0: d = 2, nibble 9 → 2.
        let mut b = h(2.0).to_vec();
        b.extend([0x99u8; 16]);
        assert_eq!(dequantize(Q4_0, &b, 32).unwrap(), vec![2.0; 32]);
        // A type gradlens does not read, and a wrong length.
        assert!(byte_size(10, 256).unwrap_err().contains("Q2_K"));
        assert!(dequantize(Q8_0, &b, 32).unwrap_err().contains("bytes"));
    }

    /// Random blocks of every quantized type, dequantized by transformers' GGUF code
    /// (scripts/make_gguf_block_goldens.py): the same f32 values, bit for bit.
    #[test]
    fn blocks_dequantize_as_transformers_does() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/gguf-blocks/blocks.json");
        let golden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let golden = golden.as_object().unwrap();
        assert_eq!(golden.len(), 6, "Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K");
        for (name, g) in golden {
            let hex = g["hex"].as_str().unwrap();
            let raw: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let want: Vec<f32> = g["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let ty = g["type"].as_u64().unwrap() as u32;
            let got = dequantize(ty, &raw, want.len()).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn k_quant_scales_unpack_as_ggml() {
        let s: Vec<u8> = (0..12).map(|i| (i * 37 + 11) as u8).collect();
        let (sc, mn) = k_scales(&s);
        assert_eq!(sc[1], (s[1] & 63) as f32);
        assert_eq!(mn[2], (s[6] & 63) as f32);
        assert_eq!(sc[5], ((s[9] & 0xF) | ((s[1] >> 6) << 4)) as f32);
        assert_eq!(mn[7], ((s[11] >> 4) | ((s[7] >> 6) << 4)) as f32);
    }
}
