//! Figures for benchmarks: percentiles and medians of what they measured.

use std::time::Duration;

/// The `p`-th percentile (`p` in `0.0..=1.0`) of `sorted`, which must be
/// sorted and not empty: the sample nearest to rank `(len - 1) * p`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The median of `v` (the upper one of an even count): the sample at
/// `len / 2` once sorted. `v` must not be empty nor hold a NaN.
pub fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("samples that compare"));
    v[v.len() / 2]
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

    #[test]
    fn the_median_is_the_upper_middle_sample() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(median(vec![ms(9), ms(1), ms(5)]), ms(5));
    }
}
