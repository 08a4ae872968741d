//! Local health: is this node itself too slow to judge others?
//!
//! A node whose own event loop runs late sees every ping and dial time out and
//! would accuse healthy peers, whose refutations then add load everywhere: a
//! failure detector that feeds on its own false positives. As in Lifeguard
//! (Dadgar et al., 2018), a node that notices it is running late holds its
//! accusations until it has caught up. It measures lateness directly: how far
//! behind schedule its own periodic timer fires.

use std::time::{Duration, Instant};

/// Lateness above which this node considers itself degraded.
const DEGRADED_LAG: Duration = Duration::from_millis(200);
/// How fast remembered lateness fades (half-life).
const HALF_LIFE: Duration = Duration::from_secs(1);

/// Tracks how late our periodic timer fires.
#[derive(Debug, Clone, Default)]
pub struct LocalHealth {
    last_tick: Option<Instant>,
    /// Decaying maximum of recent lateness, seconds.
    lag: f64,
    last_update: Option<Instant>,
}

impl LocalHealth {
    /// Records a timer tick at `now` for a timer of period `period`.
    pub fn tick(&mut self, now: Instant, period: Duration) {
        if let Some(last) = self.last_tick {
            let late = now.duration_since(last).saturating_sub(period);
            self.observe(late, now);
        }
        self.last_tick = Some(now);
    }

    /// Records lateness seen by any other means (e.g. an event handled late).
    pub fn observe(&mut self, late: Duration, now: Instant) {
        let decayed = match self.last_update {
            Some(t) => {
                let halves = now.duration_since(t).as_secs_f64() / HALF_LIFE.as_secs_f64();
                self.lag * 0.5f64.powf(halves)
            }
            None => 0.0,
        };
        self.lag = decayed.max(late.as_secs_f64());
        self.last_update = Some(now);
    }

    /// How late we have been running lately (the decaying maximum).
    pub fn lag(&self) -> Duration {
        Duration::from_secs_f64(self.lag)
    }

    /// Whether we are too late to trust our own timeouts.
    pub fn degraded(&self) -> bool {
        self.lag > DEGRADED_LAG.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctual_ticks_are_healthy() {
        let mut h = LocalHealth::default();
        let t0 = Instant::now();
        for i in 0..20 {
            h.tick(
                t0 + Duration::from_millis(100 * i),
                Duration::from_millis(100),
            );
        }
        assert!(!h.degraded());
    }

    #[test]
    fn a_late_tick_degrades_until_the_lag_fades() {
        let mut h = LocalHealth::default();
        let t0 = Instant::now();
        h.tick(t0, Duration::from_millis(100));
        h.tick(t0 + Duration::from_millis(700), Duration::from_millis(100));
        assert!(h.degraded(), "600 ms late");
        let mut t = t0 + Duration::from_millis(700);
        for _ in 0..20 {
            t += Duration::from_millis(100);
            h.tick(t, Duration::from_millis(100));
        }
        assert!(!h.degraded(), "2 s of punctual ticks later");
    }
}
