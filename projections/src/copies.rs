//! Which copy of a projection's tables a writer targets: the live tables, or one of replay's
//! copies (`crate::replay`'s tables module makes and swaps them). The projectors' writers take
//! a [`TableSet`] so that replay can run them into its shadow, without the writers knowing
//! about replay.

/// Which copy of a projection's tables a name refers to; the suffix added to each live name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableSet {
    /// The tables the service reads and its projector writes.
    Live,
    /// The rebuild's copies, written by replay only.
    Shadow,
    /// The live tables before the last swap, kept for a rollback.
    Old,
    /// A transient name used while a rollback exchanges live and previous tables.
    Swap,
}

impl TableSet {
    /// The suffix this copy adds to table and index names.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Live => "",
            Self::Shadow => "__shadow",
            Self::Old => "__old",
            Self::Swap => "__swap",
        }
    }

    /// The physical name of the live table `logical` in this copy.
    pub fn table(self, logical: &str) -> String {
        format!("{logical}{}", self.suffix())
    }

    /// The physical name of `logical`, quoted for SQL.
    pub fn quoted(self, logical: &str) -> String {
        ident(&self.table(logical))
    }
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
