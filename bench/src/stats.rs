//! Figures from samples: percentiles, medians, exact loss and duplicate
//! counts per sequence number, and milliseconds for humans.

/// Percentile `p` (0..=100) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Per-sequence-number receipt record, to count losses and duplicates exactly.
pub struct Seen {
    bits: Vec<u64>,
    pub distinct: u64,
    pub dups: u64,
    pub out_of_range: u64,
}

impl Seen {
    pub fn new(n: usize) -> Seen {
        Seen { bits: vec![0; n.div_ceil(64)], distinct: 0, dups: 0, out_of_range: 0 }
    }

    pub fn mark(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        match self.bits.get_mut(w) {
            None => self.out_of_range += 1,
            Some(word) if *word & (1 << b) != 0 => self.dups += 1,
            Some(word) => {
                *word |= 1 << b;
                self.distinct += 1;
            }
        }
    }
}

pub fn seq_of(body: &[u8]) -> Option<u64> {
    body.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Milliseconds as a short human string.
pub fn ms(d: f64) -> String {
    if d < 10.0 {
        format!("{d:.2} ms")
    } else {
        format!("{d:.1} ms")
    }
}
