//! Dynamic host ports: `ECS_DYNAMIC_HOST_PORT_RANGE`, as the real agent (1.68 and later) reads it.
//!
//! With the variable set, a port mapping without a host port (0 or absent) gets one the agent
//! picks itself from the range and hands to Docker explicitly, so that several agents on one
//! machine (tests/bench/scale --dockerds K) with disjoint ranges never pick the same port. Like
//! the real agent it scans the range from the port after the last one it handed out, wrapping
//! once, and takes the first port it can bind on 0.0.0.0 (then releases it).
//!
//! Without the variable the real agent uses the kernel's `ip_local_port_range`, the range
//! Docker itself picks from, so leaving the choice to Docker is equivalent and stays the
//! behaviour.

use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

use anyhow::bail;

/// The agent setting's name.
pub const VARIABLE: &str = "ECS_DYNAMIC_HOST_PORT_RANGE";

/// An inclusive port range, `start-end` (the agent's format, e.g. `40000-41999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// Parses `start-end` with 1 <= start <= end <= 65535.
    pub fn parse(value: &str) -> anyhow::Result<PortRange> {
        let Some((a, b)) = value.trim().split_once('-') else {
            bail!("{VARIABLE}={value:?}: expected start-end, e.g. 40000-41999");
        };
        let num = |s: &str| -> anyhow::Result<u16> {
            match s.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => bail!("{VARIABLE}={value:?}: {s:?} is not a port (1-65535)"),
            }
        };
        let (start, end) = (num(a)?, num(b)?);
        if start > end {
            bail!("{VARIABLE}={value:?}: the start {start} is above the end {end}");
        }
        Ok(PortRange { start, end })
    }

    /// The setting from the environment: `None` without the variable (Docker picks).
    pub fn from_env() -> anyhow::Result<Option<PortRange>> {
        match std::env::var(VARIABLE) {
            Ok(v) => PortRange::parse(&v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => bail!("{VARIABLE}: {e}"),
        }
    }
}

/// Picks host ports from a range, one at a time, for the whole agent.
#[derive(Debug)]
pub struct HostPorts {
    range: PortRange,
    /// The port handed out last; the next scan starts after it.
    last: Mutex<Option<u16>>,
}

impl HostPorts {
    pub fn new(range: PortRange) -> HostPorts {
        HostPorts {
            range,
            last: Mutex::new(None),
        }
    }

    /// A port of the range that is free for `protocol` (`tcp` or `udp`) right now, skipping
    /// those in `taken` (handed to other containers of the same create). Err when none is.
    pub fn pick(&self, protocol: &str, taken: &[u16]) -> Result<u16, String> {
        let mut last = self.last.lock().expect("host port lock");
        let PortRange { start, end } = self.range;
        let first = match *last {
            Some(l) if l < end => l + 1,
            _ => start,
        };
        let candidates = (first..=end).chain(start..first);
        for port in candidates {
            if taken.contains(&port) || !is_free(port, protocol) {
                continue;
            }
            *last = Some(port);
            return Ok(port);
        }
        Err(format!("no free host port in {VARIABLE} {start}-{end} for {protocol}"))
    }
}

/// Binds `0.0.0.0:port` and lets go of it again.
fn is_free(port: u16, protocol: &str) -> bool {
    match protocol {
        "udp" => UdpSocket::bind(("0.0.0.0", port)).is_ok(),
        _ => TcpListener::bind(("0.0.0.0", port)).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_the_agent_writes_them() {
        assert_eq!(
            PortRange::parse("40000-41999").unwrap(),
            PortRange {
                start: 40000,
                end: 41999
            }
        );
        assert_eq!(
            PortRange::parse(" 100-100 ").unwrap(),
            PortRange { start: 100, end: 100 }
        );
        for bad in ["", "40000", "40000-", "-5", "0-10", "10-70000", "200-100", "a-b", "1:2"] {
            let err = PortRange::parse(bad).unwrap_err().to_string();
            assert!(err.contains(VARIABLE), "{bad:?}: {err}");
        }
    }

    #[test]
    fn picks_go_round_the_range_and_skip_ports_in_use() {
        // A port of our own, held open, inside a small range.
        let held = TcpListener::bind("0.0.0.0:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        let Some(start) = busy.checked_sub(1) else { return };
        let ports = HostPorts::new(PortRange {
            start,
            end: busy.saturating_add(1).max(start + 2),
        });
        let end = ports.range.end;
        let mut seen = Vec::new();
        for _ in 0..4 {
            if let Ok(p) = ports.pick("tcp", &[]) {
                seen.push(p);
            }
        }
        assert!(!seen.contains(&busy), "{busy} is held: {seen:?}");
        assert!(seen.iter().all(|p| (start..=end).contains(p)), "{seen:?}");
        if seen.len() >= 2 {
            assert_ne!(seen[0], seen[1], "the scan goes on after the last port handed out");
        }
        let all_taken: Vec<u16> = (start..=end).collect();
        assert!(ports.pick("tcp", &all_taken).unwrap_err().contains(VARIABLE));
    }
}
