//! The cursor of the paged feed read: a feed position, written `<transaction id>-<global
//! position>`. Subscribers treat it as opaque and hand back what the last page said.

use std::fmt;
use std::str::FromStr;

use order_projections::FeedPosition;

/// Where a page read continues: after this feed position. The default is the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedCursor(pub FeedPosition);

/// A cursor that is not two decimal numbers joined by `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a cursor is the `next` of a previous page (two numbers joined by '-'), or 0 for the start"
)]
pub struct BadCursor;

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.transaction_id, self.0.global_position)
    }
}

impl FromStr for FeedCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "0" {
            return Ok(Self::default());
        }
        let (tx, pos) = s.split_once('-').ok_or(BadCursor)?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) || !digits(pos) {
            return Err(BadCursor);
        }
        Ok(Self(FeedPosition {
            transaction_id: tx.parse().map_err(|_| BadCursor)?,
            global_position: pos.parse().map_err(|_| BadCursor)?,
        }))
    }
}

impl serde::Serialize for FeedCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FeedCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_writes_and_nothing_else() {
        let c = FeedCursor(FeedPosition {
            transaction_id: 7_412,
            global_position: 31,
        });
        assert_eq!(c.to_string(), "7412-31");
        assert_eq!("7412-31".parse::<FeedCursor>(), Ok(c));
        assert_eq!("0".parse::<FeedCursor>(), Ok(FeedCursor::default()));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1-+2",
            " 1-2",
            "99999999999999999999-1",
            "1-99999999999999999999",
        ] {
            assert!(bad.parse::<FeedCursor>().is_err(), "{bad:?}");
        }
    }
}
