//! The sites a local testbed pretends to be: real cities with their
//! coordinates, and WAN delays derived from the distance between them.

use serde::Serialize;

/// A site of the emulated wide-area testbed.
#[derive(Debug, Clone, Serialize)]
pub struct SiteInfo {
    /// Short PlanetLab-style site name (also the slice name prefix).
    pub name: &'static str,
    /// Region used by placement constraints.
    pub region: &'static str,
    /// ISO 3166 country code.
    pub country: &'static str,
    /// City, for people.
    pub city: &'static str,
    pub latitude: f64,
    pub longitude: f64,
}

/// Sites in the order a testbed of N sites takes them: the first three span
/// three regions, so even the default testbed crosses continents.
pub const CATALOG: &[SiteInfo] = &[
    SiteInfo {
        name: "ams",
        region: "eu",
        country: "NL",
        city: "Amsterdam",
        latitude: 52.37,
        longitude: 4.90,
    },
    SiteInfo {
        name: "iad",
        region: "na",
        country: "US",
        city: "Ashburn",
        latitude: 39.04,
        longitude: -77.49,
    },
    SiteInfo {
        name: "nrt",
        region: "asia",
        country: "JP",
        city: "Tokyo",
        latitude: 35.68,
        longitude: 139.69,
    },
    SiteInfo {
        name: "fra",
        region: "eu",
        country: "DE",
        city: "Frankfurt",
        latitude: 50.11,
        longitude: 8.68,
    },
    SiteInfo {
        name: "sea",
        region: "na",
        country: "US",
        city: "Seattle",
        latitude: 47.61,
        longitude: -122.33,
    },
    SiteInfo {
        name: "sin",
        region: "asia",
        country: "SG",
        city: "Singapore",
        latitude: 1.35,
        longitude: 103.82,
    },
    SiteInfo {
        name: "gru",
        region: "sa",
        country: "BR",
        city: "Sao Paulo",
        latitude: -23.55,
        longitude: -46.63,
    },
    SiteInfo {
        name: "syd",
        region: "oc",
        country: "AU",
        city: "Sydney",
        latitude: -33.87,
        longitude: 151.21,
    },
];

/// Great-circle distance in km.
pub fn distance_km(a: &SiteInfo, b: &SiteInfo) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.latitude.to_radians(),
        a.longitude.to_radians(),
        b.latitude.to_radians(),
        b.longitude.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// One-way WAN delay in ms between two sites: light in fibre covers about
/// 200 km per ms, real paths are ~1.5× the great circle, plus 1 ms of
/// access latency. Scaled by `scale` (1.0 = realistic; smaller for tests).
pub fn one_way_delay_ms(a: &SiteInfo, b: &SiteInfo, scale: f64) -> f64 {
    ((distance_km(a, b) * 1.5 / 200.0) + 1.0) * scale
}

/// The first `n` catalog sites, or an error naming the limit.
pub fn sites(n: usize) -> anyhow::Result<&'static [SiteInfo]> {
    if n == 0 || n > CATALOG.len() {
        anyhow::bail!("a local testbed has 1 to {} sites, not {n}", CATALOG.len());
    }
    Ok(&CATALOG[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_distance_and_stay_in_wan_range() {
        let (ams, iad, nrt, fra) = (&CATALOG[0], &CATALOG[1], &CATALOG[2], &CATALOG[3]);
        let d_eu = one_way_delay_ms(ams, fra, 1.0);
        let d_atlantic = one_way_delay_ms(ams, iad, 1.0);
        let d_asia = one_way_delay_ms(ams, nrt, 1.0);
        assert!(d_eu < 5.0, "{d_eu}");
        assert!((30.0..60.0).contains(&d_atlantic), "{d_atlantic}");
        assert!(d_asia > d_atlantic && d_asia < 90.0, "{d_asia}");
        assert!((distance_km(ams, iad) - distance_km(iad, ams)).abs() < 1e-9);
    }

    #[test]
    fn site_names_are_unique() {
        let mut names: Vec<_> = CATALOG.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
    }
}
