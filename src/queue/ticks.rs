//! Ticks, pure: a `pg_snapshot` as the reader uses it (its text, its `xmax`
//! and its list of transactions in progress) and the read's parameters that
//! select the transactions visible in a newer snapshot and not in this one.

/// A snapshot of the transaction ids, `xmin:xmax:xip,...` as Postgres writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    text: String,
    xmax: u64,
    xip: Vec<u64>,
}

impl Tick {
    /// Parses Postgres's text form of a `pg_snapshot`.
    pub fn parse(text: &str) -> Result<Tick, String> {
        let bad = || format!("not a pg_snapshot: {text:?}");
        let mut parts = text.trim().splitn(3, ':');
        let xmin: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let xmax: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let list = parts.next().ok_or_else(bad)?;
        let xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',')
                .map(|x| x.parse::<u64>().map_err(|_| bad()))
                .collect::<Result<Vec<_>, _>>()?
        };
        if xmin > xmax || xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(bad());
        }
        Ok(Tick {
            text: text.trim().to_string(),
            xmax,
            xip,
        })
    }

    /// The snapshot as Postgres reads it back.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The read's lower bound: transactions from this id on began after the
    /// snapshot (as text, for an `xid8` parameter).
    pub fn xmax_param(&self) -> String {
        self.xmax.to_string()
    }

    /// The transactions in progress at the snapshot (as text, for `xid8[]`):
    /// those that committed since are read by a probe each.
    pub fn xip_param(&self) -> Vec<String> {
        self.xip.iter().map(u64::to_string).collect()
    }

    /// Whether every transaction this one saw as ended is ended in `other`
    /// too, and `other` saw at least as far: `other` is not older.
    pub fn not_older_than(&self, other: &Tick) -> bool {
        self.xmax >= other.xmax
            && self
                .xip
                .iter()
                .all(|x| *x >= other.xmax || other.xip.contains(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_snapshots() {
        let t = Tick::parse("100:105:100,102").unwrap();
        assert_eq!(t.xmax_param(), "105");
        assert_eq!(t.xip_param(), vec!["100".to_string(), "102".to_string()]);
        assert_eq!(t.text(), "100:105:100,102");
        let t = Tick::parse("1:1:").unwrap();
        assert_eq!(t.xmax_param(), "1");
        assert!(t.xip_param().is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_snapshot() {
        for bad in ["", "1", "1:2", "a:b:", "5:4:", "1:5:7", "1:5:0", "1:5:2,x"] {
            assert!(Tick::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn compares_ticks_taken_one_after_the_other() {
        let old = Tick::parse("100:105:100,102").unwrap();
        let new = Tick::parse("102:110:102,107").unwrap();
        assert!(new.not_older_than(&old));
        assert!(!old.not_older_than(&new));
        assert!(old.not_older_than(&old));
    }
}
