//! Figures for benchmarks: percentiles of measured durations.

use std::time::Duration;

/// The `p`-th percentile (`p` in `0.0..=1.0`) of `sorted`, which must be
/// sorted and not empty: the sample nearest to rank `(len - 1) * p`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let v: Vec<Duration> = (1..=101).map(ms).collect();
        assert_eq!(percentile(&v, 0.0), ms(1));
        assert_eq!(percentile(&v, 0.5), ms(51));
        assert_eq!(percentile(&v, 0.99), ms(100));
        assert_eq!(percentile(&v, 1.0), ms(101));
        assert_eq!(percentile(&[ms(7)], 0.99), ms(7));
    }
}
