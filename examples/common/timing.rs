//! Shared by the timing examples: the median of repeated runs of a closure.

use std::time::Instant;

/// Prints the median milliseconds of `n` runs of `f` after one warm-up.
pub fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    println!("{name:<48} {:9.2} ms", v[n / 2] * 1e3);
}
