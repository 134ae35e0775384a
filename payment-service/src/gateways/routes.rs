//! `PAYMENT_GATEWAYS` (name=url, comma-separated) and `PAYMENT_ROUTES` (per payment-method type,
//! the ordered providers to try: `card:card-a,card-b;pix:pix`), parsed and checked against each
//! other at start-up.

use std::fmt;
use std::str::FromStr;

/// A payment-method type, as routes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Card,
    Pix,
    /// Not routed: the customer's wallet, inside payment-service.
    Wallet,
}

impl MethodKind {
    pub fn of(method: shared::money::PaymentMethod) -> Self {
        use shared::money::PaymentMethod::*;
        match method {
            CardVisa | CardChargeDeclined | CardChargeDeclinedInsufficientFunds => Self::Card,
            Wallet => Self::Wallet,
            Pix => Self::Pix,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "card" => Some(Self::Card),
            "pix" => Some(Self::Pix),
            _ => None,
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Card => "card",
            Self::Pix => "pix",
            Self::Wallet => "wallet",
        })
    }
}

/// Provider names and base URLs, in the order configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayList(pub Vec<(String, String)>);

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromStr for GatewayList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut list: Vec<(String, String)> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not name=url"))?;
            let (name, url) = (name.trim(), url.trim());
            if !valid_name(name) {
                return Err(format!("{name:?} is not a provider name (letters, digits, '-', '_')"));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{name}: {url:?} is not an http(s) URL"));
            }
            if list.iter().any(|(n, _)| n == name) {
                return Err(format!("{name} is listed twice"));
            }
            list.push((name.to_string(), url.to_string()));
        }
        if list.is_empty() {
            return Err("no provider listed".into());
        }
        Ok(Self(list))
    }
}

/// Per payment-method type, the ordered provider names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable(Vec<(MethodKind, Vec<String>)>);

impl FromStr for RouteTable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut table = Vec::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (kind, names) = entry
                .split_once(':')
                .ok_or_else(|| format!("{entry:?} is not type:provider,provider"))?;
            let kind = MethodKind::parse(kind.trim())
                .ok_or_else(|| format!("{kind:?} is not a payment-method type (card, pix)"))?;
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() {
                return Err(format!("{kind} has no provider"));
            }
            if table.iter().any(|(k, _)| *k == kind) {
                return Err(format!("{kind} is routed twice"));
            }
            table.push((kind, names));
        }
        Ok(Self(table))
    }
}

impl RouteTable {
    pub fn route(&self, kind: MethodKind) -> &[String] {
        self.0.iter().find(|(k, _)| *k == kind).map_or(&[], |(_, names)| names)
    }

    pub fn methods_of(&self, provider: &str) -> Vec<MethodKind> {
        self.0
            .iter()
            .filter(|(_, names)| names.iter().any(|n| n == provider))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every routed provider is configured, and cards have a route.
    pub fn check(&self, gateways: &GatewayList) -> Result<(), String> {
        for (kind, names) in &self.0 {
            if let Some(missing) = names.iter().find(|n| !gateways.0.iter().any(|(g, _)| g == *n)) {
                return Err(format!(
                    "{kind} routes to {missing}, which PAYMENT_GATEWAYS does not name"
                ));
            }
        }
        if self.route(MethodKind::Card).is_empty() {
            return Err("card has no route".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_and_routes_parse_in_their_configured_order() {
        let list: GatewayList = "card-a=http://127.0.0.1:9101, card-b=http://127.0.0.1:9102"
            .parse()
            .expect("list");
        assert_eq!(list.0[1], ("card-b".into(), "http://127.0.0.1:9102".into()));
        let routes: RouteTable = "card:card-b,card-a".parse().expect("routes");
        assert_eq!(routes.route(MethodKind::Card), ["card-b", "card-a"]);
        assert_eq!(routes.route(MethodKind::Pix), [] as [String; 0]);
        assert_eq!(routes.methods_of("card-a"), [MethodKind::Card]);
        assert!(routes.check(&list).is_ok());
    }

    #[test]
    fn malformed_or_inconsistent_settings_are_refused_naming_the_problem() {
        for bad in [
            "",
            "card-a",
            "card-a=ftp://x",
            "a=http://x,a=http://y",
            "bad name=http://x",
        ] {
            assert!(bad.parse::<GatewayList>().is_err(), "{bad:?}");
        }
        for bad in ["card", "cash:card-a", "card:", "card:a;card:b"] {
            assert!(bad.parse::<RouteTable>().is_err(), "{bad:?}");
        }
        let list: GatewayList = "card-a=http://x".parse().expect("list");
        let err = "card:card-a,card-z".parse::<RouteTable>().expect("routes").check(&list);
        assert!(err.is_err_and(|e| e.contains("card-z")));
        assert!(
            "pix:card-a"
                .parse::<RouteTable>()
                .expect("routes")
                .check(&list)
                .is_err()
        );
    }
}
