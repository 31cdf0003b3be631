//! What follows a flip the daemon applied, besides its log line: an entry in
//! `<toggle>.history` and the hooks. Fed by [`State::applied`] through a
//! bounded queue, so no writer of the state ever waits on a disk or a hook.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::history::{self, Entry};
use crate::hooks::{FlipEvent, Hooks};
use crate::maint::onoff;
use crate::state::{Applied, State};

/// Changes queued at most; beyond it [`State::applied`] drops one and says so.
const QUEUE: usize = 64;

impl From<&Applied> for FlipEvent {
    fn from(a: &Applied) -> FlipEvent {
        let m = &a.snap.maint;
        FlipEvent {
            at: jiff::Timestamp::now(),
            was: a.flip.was,
            now: a.flip.now,
            source: a.source,
            cause: a.cause.clone(),
            message: m.active.then(|| m.message.clone()),
            by: m.by.clone().filter(|_| m.present),
            reason: m.reason.clone().filter(|_| m.present),
            until: m.until.filter(|_| m.present),
            toggle: a.snap.rt.config.maintenance.toggle.clone(),
        }
    }
}

impl From<&FlipEvent> for Entry {
    fn from(ev: &FlipEvent) -> Entry {
        Entry::Flip {
            at: ev.at,
            state: onoff(ev.now).to_string(),
            was: onoff(ev.was).to_string(),
            source: ev.source.to_string(),
            cause: ev.cause.clone(),
            by: ev.by.clone(),
            reason: ev.reason.clone(),
        }
    }
}

/// Connects the state's applied changes to the history and the hooks (on the current runtime).
pub fn spawn(state: Arc<State>) {
    let (tx, mut rx) = mpsc::channel::<Applied>(QUEUE);
    state.set_audit(tx);
    let hooks = Hooks::spawn(state);
    tokio::spawn(async move {
        while let Some(applied) = rx.recv().await {
            let ev = Arc::new(FlipEvent::from(&applied));
            drop(applied);
            hooks.notify(ev.clone());
            let path = history::path_for(&ev.toggle);
            let entry = Entry::from(&*ev);
            let written = tokio::task::spawn_blocking(move || history::append(&path, &entry)).await;
            if let Some(e) = match written {
                Ok(r) => r.err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            } {
                let file = history::path_for(&ev.toggle);
                tracing::warn!(file = %file.display(), "cannot append to the history: {e}");
            }
        }
    });
}
