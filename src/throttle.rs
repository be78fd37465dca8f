//! A shared upload/download rate limit (`--max-bandwidth`), so backups never starve
//! Cassandra's own disk and network traffic. A token bucket with one second of burst:
//! callers take the bytes they are about to send and sleep off any debt.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// `bytes_per_sec` must be positive.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.rate);
            st.1 = now;
            st.0 -= n as f64;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `50M`, `50MB`, `50M/s`, `1.5G`, `800K` or a plain number of bytes per second.
/// K, M, G, T are powers of 1024.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "{s:?}: unknown unit {c:?}; use K, M, G or T (per second)"
                    ));
                }
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate such as 50M (bytes per second)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    Ok((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_units() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("50MB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("800k"), Ok(800 << 10));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5X").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_holds_the_average_rate() {
        let t = Throttle::new(1 << 20);
        let start = Instant::now();
        // 1 s of burst, then 4 MiB more at 1 MiB/s.
        for _ in 0..20 {
            t.take(256 << 10).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3900) && took <= Duration::from_millis(4100),
            "{took:?}"
        );
    }
}
