//! What a config turns into once the files it points to are loaded and
//! checked: the allowlist, trusted proxies, the page, the upstream client.
//! `check` loads the same files through [`Loaded::load`].

use std::sync::Arc;

use crate::allowlist::{self, IpSet};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::page::PageSet;
use crate::tokens::{LoadError, TokenStore};
use crate::upstream::UpstreamClient;

/// What a config turns into once its files are loaded.
pub struct Runtime {
    pub config: Arc<Config>,
    pub allow: IpSet,
    pub trusted: IpSet,
    pub pages: Arc<PageSet>,
    /// Named bypass tokens (`bypass.tokens_file`).
    pub tokens: TokenStore,
    /// The upstream client; kept across reloads that leave the upstream alone
    /// (see [`Runtime::keep_upstream_of`]), so its pooled connections stay in use.
    pub upstream: UpstreamClient,
    /// Every allowlist entry as configured, kept only for `clients.whoami`
    /// (which names the entry a visitor matched); empty otherwise.
    pub allow_entries: Vec<ipnet::IpNet>,
    /// What the config lets through that it likely did not mean to (see `misconfig`).
    pub warnings: Vec<String>,
}

/// The files a config points to, loaded and checked (used by `check` too).
pub struct Loaded {
    pub allow: IpSet,
    /// The allowlist's entries as configured (`clients.allow`, then `allow_file`).
    pub allow_entries: Vec<ipnet::IpNet>,
    pub pages: PageSet,
    pub tokens: TokenStore,
    /// Misconfigurations worth a warning (`check` prints them, the daemon logs them).
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Checks the toggle directory and loads the allowlist file and the page directory.
    pub fn load(config: &Config) -> Result<Loaded, ConfigErrors> {
        let file = config.file.display().to_string();
        let mut errors = Vec::new();
        let plain = |key: &str, message: String| ConfigError {
            file: file.clone(),
            pos: None,
            key: key.to_string(),
            message,
        };
        let toggle_dir = crate::fsutil::parent_dir(&config.maintenance.toggle);
        if !toggle_dir.is_dir() {
            errors.push(plain(
                "maintenance.toggle",
                format!(
                    "directory {:?} does not exist (create it; the toggle file itself need not exist)",
                    toggle_dir
                ),
            ));
        }
        let mut nets = config.clients.allow.clone();
        if let Some(path) = &config.clients.allow_file {
            match std::fs::read_to_string(path) {
                Err(e) => errors.push(plain(
                    "clients.allow_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
                Ok(text) => match allowlist::parse_allow_file(&text) {
                    Ok(more) => nets.extend(more),
                    Err(e) => errors.push(ConfigError {
                        file: path.display().to_string(),
                        pos: Some((e.line, e.column)),
                        key: "clients.allow_file".into(),
                        message: e.source.to_string(),
                    }),
                },
            }
        }
        let tokens = TokenStore::load(&config.bypass.tokens_file).unwrap_or_else(|e| {
            errors.push(match e {
                LoadError::Line { file, error } => ConfigError {
                    file,
                    pos: Some((error.line, 1)),
                    key: "bypass.tokens_file".into(),
                    message: error.message,
                },
                e @ LoadError::Read(..) => plain("bypass.tokens_file", e.to_string()),
            });
            TokenStore::default()
        });
        if let Some(Err(e)) = config.hooks.webhook_ca.as_deref().map(crate::webhook::load_ca) {
            errors.push(plain("hooks.webhook_ca", e));
        }
        if config.buffering.requests || config.buffering.responses {
            let dir = crate::buffer::temp_dir(config.buffering.dir.as_deref());
            // Unlinked at once: this only proves that bodies can spill to disk there.
            if let Err(e) = tempfile::tempfile_in(&dir) {
                errors.push(plain(
                    "buffering.dir",
                    format!("cannot create temporary files in {}: {e}", dir.display()),
                ));
            }
        }
        if let Some(tls) = &config.tls {
            if let Err(e) = crate::tls::check(&tls.certs) {
                errors.push(plain("tls", e.to_string()));
            }
        }
        let pages = match &config.maintenance.dir {
            None => Some(PageSet::embedded()),
            Some(dir) => match PageSet::load(dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(plain("maintenance.dir", e.to_string()));
                    None
                }
            },
        };
        match pages {
            Some(pages) if errors.is_empty() => {
                let allow = IpSet::new(nets.iter().copied());
                Ok(Loaded {
                    warnings: crate::misconfig::config_warnings(&config.clients, &nets, &allow),
                    allow,
                    allow_entries: nets,
                    pages,
                    tokens,
                })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }
}

impl Runtime {
    /// Builds a runtime from a config: loads the files it points to.
    pub fn build(config: Config) -> Result<Runtime, ConfigErrors> {
        let loaded = Loaded::load(&config)?;
        Ok(Runtime {
            upstream: UpstreamClient::new(&config.upstream),
            trusted: IpSet::new(config.clients.trusted_proxies.iter().copied()),
            allow: loaded.allow,
            allow_entries: if config.clients.whoami {
                loaded.allow_entries
            } else {
                Vec::new()
            },
            warnings: loaded.warnings,
            pages: Arc::new(loaded.pages),
            tokens: loaded.tokens,
            config: Arc::new(config),
        })
    }

    /// Takes over `old`'s upstream client when this config names the same upstream.
    pub fn keep_upstream_of(&mut self, old: &Runtime) {
        let (a, b) = (&old.config.upstream, &self.config.upstream);
        if a.target == b.target && a.connect_timeout == b.connect_timeout {
            self.upstream = old.upstream.clone();
        }
    }
}
