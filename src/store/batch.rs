//! The answers of one group-commit batch (`Store::insert_deliveries`), put together from what its few
//! statements returned. Both stores write a batch with one multi-row insert of the deliveries and one of
//! the body digests (replay protection), inside one transaction; what is a new row, a duplicate delivery id
//! or a replayed body is decided here, the same way for both.

use std::collections::HashMap;

use super::{Inserted, NewDelivery};
use crate::ids::DeliveryId;

/// Deliveries per multi-row statement: 7 bound values each stays far below SQLite's and Postgres's limits.
pub(super) const ROWS_PER_STATEMENT: usize = 64;

/// The batch's answers while they are worked out.
pub(super) struct Answers {
    answers: Vec<Inserted>,
    /// Bodies sent twice in the batch: (the later one's place, the first one's place).
    sent_twice: Vec<(usize, usize)>,
}

/// A body to check against the replay window: the delivery's place in the batch, its row and the digest.
pub(super) struct Fresh {
    pub index: usize,
    pub row: i64,
    pub digest: [u8; 32],
}

impl Answers {
    /// What the deliveries' insert returned (`(delivery_id, row id)` of each row written) made into answers:
    /// of two deliveries of the batch with one id, the first is the row and the second a duplicate.
    /// `ids` are the batch's delivery ids as stored.
    pub fn from_inserted<'a>(
        ids: impl Iterator<Item = &'a str>,
        inserted: Vec<(String, i64)>,
    ) -> Answers {
        let mut rows: HashMap<String, i64> = inserted.into_iter().collect();
        let answers = ids
            .map(|id| match rows.remove(id) {
                Some(row) => Inserted::New(row),
                None => Inserted::Duplicate,
            })
            .collect();
        Answers {
            answers,
            sent_twice: Vec::new(),
        }
    }

    /// The new rows whose bodies must be checked against the window, one per distinct body. A body seen
    /// twice in the batch is a replay of its first sending; its row is returned in the second list, to
    /// be removed.
    pub fn digests(&mut self, batch: &[NewDelivery]) -> (Vec<Fresh>, Vec<i64>) {
        let mut first: HashMap<[u8; 32], usize> = HashMap::new();
        let mut fresh = Vec::new();
        let mut removed = Vec::new();
        for (index, d) in batch.iter().enumerate() {
            let Inserted::New(row) = self.answers[index] else {
                continue;
            };
            let digest = *d.digest();
            match first.get(&digest) {
                Some(&earlier) => {
                    removed.push(row);
                    self.sent_twice.push((index, earlier));
                    self.answers[index] = Inserted::Replayed {
                        first: batch[earlier].delivery_id.clone(),
                    };
                }
                None => {
                    first.insert(digest, index);
                    fresh.push(Fresh { index, row, digest });
                }
            }
        }
        (fresh, removed)
    }

    /// The body of `fresh` was stored before, within the window, under `first`: its row is not kept (nor
    /// are those of the batch's later sendings of it, which are replays of `first` too).
    pub fn replayed(&mut self, fresh: &Fresh, first: DeliveryId) {
        for &(later, earlier) in &self.sent_twice {
            if earlier == fresh.index {
                self.answers[later] = Inserted::Replayed {
                    first: first.clone(),
                };
            }
        }
        self.answers[fresh.index] = Inserted::Replayed { first };
    }

    pub fn into_answers(self) -> Vec<Inserted> {
        self.answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, body: &str) -> NewDelivery {
        NewDelivery::new(
            DeliveryId(id.into()),
            "issues".into(),
            None,
            None,
            None,
            body.as_bytes().to_vec().into(),
        )
    }

    #[test]
    fn a_batch_with_a_repeated_id_and_a_repeated_body_answers_each_once() {
        let batch = [
            delivery("a", "{1}"),
            delivery("b", "{2}"),
            delivery("a", "{3}"),
            delivery("c", "{2}"),
            delivery("d", "{4}"),
        ];
        // "a" was written once (the first), "d" was stored before this batch.
        let inserted = vec![("a".into(), 10), ("b".into(), 11), ("c".into(), 12)];
        let mut answers =
            Answers::from_inserted(batch.iter().map(|d| d.delivery_id.0.as_str()), inserted);
        let (fresh, removed) = answers.digests(&batch);
        assert_eq!(
            fresh.iter().map(|f| (f.index, f.row)).collect::<Vec<_>>(),
            [(0, 10), (1, 11)]
        );
        assert_eq!(removed, [12]);
        // The store found "b"'s body stored before, under "z".
        answers.replayed(&fresh[1], DeliveryId("z".into()));
        assert_eq!(
            answers.into_answers(),
            [
                Inserted::New(10),
                Inserted::Replayed {
                    first: DeliveryId("z".into())
                },
                Inserted::Duplicate,
                Inserted::Replayed {
                    first: DeliveryId("z".into())
                },
                Inserted::Duplicate,
            ]
        );
    }
}
