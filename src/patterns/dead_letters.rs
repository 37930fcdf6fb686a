//! Dead letters, for people: list them, replay them into the write-behind queue, or discard them.
//!
//! A replay publishes the original event again, with its original version, so it can never
//! overwrite anything newer, and removes the dead letter only once the queue accepted it.

use std::sync::Arc;

use crate::domain::error_chain::Chain;
use crate::domain::write_event::WriteEvent;
use crate::ports::dead_letters::{DeadLetter, DeadLetterId};
use crate::ports::{CacheError, DeadLetters, WriteQueue};

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// How many dead letters there are in all (the page's length if they could not be counted).
    pub total: u64,
    /// The dead letters, oldest first.
    pub items: Vec<DeadLetter>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Replay {
    /// Replayed and removed.
    pub replayed: Vec<DeadLetterId>,
    /// Not replayed (or replayed but not removed), with the reason.
    pub failed: Vec<(DeadLetterId, String)>,
}

/// The dead-letter service. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetterAdmin {
    dead_letters: Arc<dyn DeadLetters>,
    queue: Arc<dyn WriteQueue>,
}

impl DeadLetterAdmin {
    pub(crate) fn new(dead_letters: Arc<dyn DeadLetters>, queue: Arc<dyn WriteQueue>) -> Self {
        Self { dead_letters, queue }
    }

    /// Up to `count` dead letters after `after`, and the total.
    pub(crate) async fn list(&self, count: usize, after: Option<&DeadLetterId>) -> Result<Page, CacheError> {
        let items = self.dead_letters.list(count, after).await?;
        let total = self.dead_letters.count().await.unwrap_or(items.len() as u64);
        Ok(Page { total, items })
    }

    /// The dead letter `id`.
    pub(crate) async fn get(&self, id: &DeadLetterId) -> Result<Option<DeadLetter>, CacheError> {
        self.dead_letters.get(id).await
    }

    /// Discards the dead letter `id`; false if it was not there.
    pub(crate) async fn discard(&self, id: &DeadLetterId) -> Result<bool, CacheError> {
        let removed = self.dead_letters.remove(id).await?;
        if removed {
            tracing::info!(%id, "dead letter discarded");
        }
        Ok(removed)
    }

    /// Replays the dead letter `id`; `None` if it was not there.
    pub(crate) async fn replay_one(&self, id: &DeadLetterId) -> Result<Option<Replay>, CacheError> {
        match self.dead_letters.get(id).await? {
            Some(letter) => Ok(Some(self.replay(vec![letter]).await)),
            None => Ok(None),
        }
    }

    /// Replays the oldest `count` dead letters.
    pub(crate) async fn replay_oldest(&self, count: usize) -> Result<Replay, CacheError> {
        let letters = self.dead_letters.list(count, None).await?;
        Ok(self.replay(letters).await)
    }

    async fn replay(&self, letters: Vec<DeadLetter>) -> Replay {
        let mut replay = Replay::default();
        for letter in letters {
            let event = match WriteEvent::parse(&letter.event) {
                Ok(event) => event,
                Err(e) => {
                    replay.failed.push((letter.id, format!("cannot be replayed: {e}; discard it with DELETE")));
                    continue;
                }
            };
            if let Err(e) = self.queue.publish(&event).await {
                replay.failed.push((letter.id, Chain(&e).to_string()));
                continue;
            }
            match self.dead_letters.remove(&letter.id).await {
                Ok(_) => replay.replayed.push(letter.id),
                // Published but not removed: a later replay publishes it again, which is harmless.
                Err(e) => replay.failed.push((letter.id, format!("replayed, but not removed: {}", Chain(&e)))),
            }
        }
        tracing::info!(replayed = replay.replayed.len(), not_replayed = replay.failed.len(), "dead letters replayed");
        replay
    }
}
