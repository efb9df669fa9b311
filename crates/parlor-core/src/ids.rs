//! Identifiers. On the wire every ID is a string; inside they are typed so that a
//! `UserId` can never be passed where a `ConversationId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation's message sequence number: 1, 2, 3… with no gaps, assigned by the store.
pub type Seq = u64;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.as_hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A registered user.
    UserId
);
uuid_id!(
    /// A direct or group conversation.
    ConversationId
);
uuid_id!(
    /// A stored message.
    MessageId
);
uuid_id!(
    /// An uploaded file: its bytes, name and type, attached to at most one message.
    FileId
);
uuid_id!(
    /// One live WebSocket connection (one device or tab of a user).
    ConnectionId
);
uuid_id!(
    /// One gateway process. Connections live on exactly one node.
    NodeId
);
