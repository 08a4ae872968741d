//! Parsers for command-line values: durations, sizes, placement groups.

use std::time::Duration;

use crate::api::{AntiAffinity, Near, PlacementGroup};

/// "90", "30s", "5m", "12h", "7d", "2w".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 30m, 12h, 7d or 2w"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h, d or w")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// MiB: "256", "256M", "4G".
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a memory size like 256, 512M or 4G (MiB unless a unit is given)")
    })?;
    match unit {
        "" | "M" | "Mi" | "MiB" => Ok(n),
        "G" | "Gi" | "GiB" => n
            .checked_mul(1024)
            .ok_or_else(|| format!("{s:?} is too large")),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use M or G")),
    }
}

/// "none", "node", "site".
pub fn parse_anti_affinity(s: &str) -> Result<AntiAffinity, String> {
    match s {
        "none" => Ok(AntiAffinity::None),
        "node" => Ok(AntiAffinity::Node),
        "site" => Ok(AntiAffinity::Site),
        _ => Err(format!("{s:?}: use none, node or site")),
    }
}

/// `COUNT[:FILTER[+FILTER...]]`, FILTER = site=a,b | region=eu | country=NL | node=n1 | near=LAT/LON/KM.
pub fn parse_placement_group(s: &str) -> Result<PlacementGroup, String> {
    let (count, filters) = s.split_once(':').unwrap_or((s, ""));
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: start with a count, e.g. 2:site=ams"))?;
    let mut g = PlacementGroup {
        count,
        ..Default::default()
    };
    for f in filters.split('+').filter(|f| !f.is_empty()) {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("{f:?}: filters look like site=ams, region=eu, country=NL, node=ams-n1 or near=52.37/4.9/500"))?;
        let list = || {
            v.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        };
        match k.trim() {
            "site" => g.sites = list(),
            "region" => g.regions = list(),
            "country" => g.countries = list(),
            "node" => g.nodes = list(),
            "near" => {
                let parts: Vec<f64> = v
                    .split('/')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("{f:?}: near=LAT/LON/KM, e.g. near=52.37/4.9/500"))?;
                let [latitude, longitude, radius_km] = parts[..] else {
                    return Err(format!("{f:?}: near=LAT/LON/KM, e.g. near=52.37/4.9/500"));
                };
                g.near = Some(Near {
                    latitude,
                    longitude,
                    radius_km,
                });
            }
            other => {
                return Err(format!(
                    "{other:?} is not a filter; use site, region, country, node or near"
                ))
            }
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("7y").is_err());
        assert_eq!(parse_mib("4G").unwrap(), 4096);
        assert!(parse_mib("-1").is_err());
    }

    #[test]
    fn placement_groups_parse_every_filter() {
        let g = parse_placement_group("2:site=ams,fra+region=eu").unwrap();
        assert_eq!((g.count, g.sites.len(), g.regions.len()), (2, 2, 1));
        let g = parse_placement_group("1:near=52.37/4.9/500").unwrap();
        assert_eq!(g.near.unwrap().radius_km, 500.0);
        assert_eq!(parse_placement_group("3").unwrap().count, 3);
        assert!(parse_placement_group("x:site=a").is_err());
        assert!(parse_placement_group("1:planet=mars").is_err());
        assert!(parse_placement_group("1:near=1/2").is_err());
    }
}
