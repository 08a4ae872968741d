//! Round-trip-time measurement with the stock `ping`, and its parsing.

use serde::Serialize;

/// Summary of one `ping` run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    /// Average RTT in ms; `None` when nothing came back.
    pub avg_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl PingSummary {
    /// Lost share in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.transmitted == 0 {
            100.0
        } else {
            100.0 * f64::from(self.transmitted - self.received.min(self.transmitted))
                / f64::from(self.transmitted)
        }
    }
}

/// Parses the summary lines of iputils `ping -q` output.
pub fn parse_ping(output: &str) -> Option<PingSummary> {
    let counts = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = counts
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    let transmitted = numbers.next()?;
    let received = numbers.next()?;
    let stats = output
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| {
            v.trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Some(PingSummary {
        transmitted,
        received,
        min_ms: stats.first().copied(),
        avg_ms: stats.get(1).copied(),
        max_ms: stats.get(2).copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_successful_run() {
        let out = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\n--- 198.18.0.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 402ms\nrtt min/avg/max/mdev = 80.101/80.220/80.400/0.120 ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 3));
        assert_eq!(s.avg_ms, Some(80.220));
        assert_eq!(s.min_ms, Some(80.101));
        assert_eq!(s.loss_percent(), 0.0);
    }

    #[test]
    fn parses_total_loss() {
        let out = "--- 198.18.0.9 ping statistics ---\n4 packets transmitted, 0 received, 100% packet loss, time 3050ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!(s.received, 0);
        assert_eq!(s.avg_ms, None);
        assert_eq!(s.loss_percent(), 100.0);
    }

    #[test]
    fn rejects_unrelated_text() {
        assert_eq!(parse_ping("ping: connect: Network is unreachable"), None);
    }
}
