//! The config file as written: serde structs that reject unknown keys and keep
//! the byte span of every value that needs checking, so errors can point at it.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: S<Vec<S<String>>>,
    pub upstream: RawUpstream,
    pub maintenance: RawMaintenance,
    #[serde(default)]
    pub clients: RawClients,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub buffering: RawBuffering,
    #[serde(default)]
    pub log: RawLog,
    pub admin: Option<RawAdmin>,
    pub tls: Option<RawTls>,
    pub fleet: Option<RawFleet>,
    #[serde(default)]
    pub bypass: RawBypass,
    #[serde(default)]
    pub hooks: RawHooks,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub on_change: Option<S<Vec<String>>>,
    pub webhook: Option<S<String>>,
    pub webhook_ca: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBypass {
    pub path: Option<S<String>>,
    pub cookie_name: Option<S<String>>,
    pub cookie_ttl: Option<S<toml::Value>>,
    pub header: Option<S<String>>,
    pub tokens_file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub endpoints: S<Vec<S<String>>>,
    pub key: Option<S<String>>,
    pub on_error: Option<S<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<RawFleetTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleetTls {
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub allow_remote: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: S<Vec<S<String>>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    #[serde(default)]
    pub certs: Vec<RawCert>,
    pub redirect_http: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    #[serde(default)]
    pub names: Vec<String>,
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: S<String>,
    pub connect_timeout: Option<S<toml::Value>>,
    pub timeout: Option<S<toml::Value>>,
    pub read_timeout: Option<S<toml::Value>>,
    pub send_timeout: Option<S<toml::Value>>,
    pub wait: Option<S<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    pub toggle: S<String>,
    pub dir: Option<S<String>>,
    pub retry_after: Option<S<toml::Value>>,
    pub message: Option<String>,
    #[serde(default)]
    pub bypass_paths: Vec<S<String>>,
    pub recheck: Option<S<toml::Value>>,
    pub acme: Option<bool>,
    pub max_held: Option<S<i64>>,
    pub announce: Option<S<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    #[serde(default)]
    pub allow: Vec<S<String>>,
    pub allow_file: Option<S<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    pub header: Option<S<String>>,
    pub whoami: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub header_timeout: Option<S<toml::Value>>,
    pub body_timeout: Option<S<toml::Value>>,
    pub grace_period: Option<S<toml::Value>>,
    pub max_connections: Option<S<i64>>,
    pub max_header_size: Option<S<toml::Value>>,
    pub max_headers: Option<S<i64>>,
    pub workers: Option<S<i64>>,
    pub linger: Option<S<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBuffering {
    pub requests: Option<bool>,
    pub responses: Option<bool>,
    pub memory: Option<S<toml::Value>>,
    pub dir: Option<S<String>>,
    pub max_body: Option<S<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<S<String>>,
    pub format: Option<S<String>>,
    pub access: Option<bool>,
    pub health: Option<bool>,
}
