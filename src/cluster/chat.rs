//! Chat in Redis: joining, sending and leaving, each one script that checks the name's
//! owner and publishes the event on the room's channel.

use super::link::{channel, key, Link, Refused, StoredMember};

impl Link {
    /// Takes `member`'s name (lower-cased `lower`) in room `id` and publishes `join_text`;
    /// returns the kept messages above `since`. `leave_head` is the member's leave event up
    /// to its time, for a reaper to finish.
    pub fn join(
        &self,
        id: u64,
        lower: &str,
        member: &StoredMember,
        leave_head: &str,
        since: u64,
        join_text: &str,
    ) -> Result<Vec<String>, Refused> {
        let json = serde_json::to_string(member).expect("a StoredMember serialises");
        let (status, replay): (i64, Vec<String>) = self.command(|c| {
            self.scripts
                .join
                .key(key("rooms"))
                .key(key(&format!("members:{id}")))
                .key(key(&format!("history:{id}")))
                .key(key(&format!("node:{}:members", self.node)))
                .key(self.alive_key())
                .arg(id)
                .arg(lower)
                .arg(&json)
                .arg(&member.owner)
                .arg(leave_head)
                .arg(since)
                .arg(join_text)
                .arg(channel(id))
                .invoke(c)
        })?;
        match status {
            1 => Ok(replay),
            0 => Err(Refused::Taken),
            -1 => Err(Refused::Gone),
            _ => {
                self.lose("this node was taken for dead");
                Err(Refused::Down)
            }
        }
    }

    /// Publishes `text` (a `send` event without its id) as `member`'s next message in room
    /// `id`; returns its id.
    pub fn send(
        &self,
        id: u64,
        lower: &str,
        member: &StoredMember,
        text: &str,
    ) -> Result<u64, Refused> {
        let json = serde_json::to_string(member).expect("a StoredMember serialises");
        let msg_id: i64 = self.command(|c| {
            self.scripts
                .send
                .key(key(&format!("members:{id}")))
                .key(key(&format!("msgid:{id}")))
                .key(key(&format!("history:{id}")))
                .arg(lower)
                .arg(&member.owner)
                .arg(&json)
                .arg(text)
                .arg(self.history_len)
                .arg(channel(id))
                .invoke(c)
        })?;
        u64::try_from(msg_id).map_err(|_| Refused::NotMember)
    }

    /// Gives up `owner`'s name `lower` in room `id` and publishes `leave_text`.
    pub fn leave(
        &self,
        id: u64,
        lower: &str,
        owner: &str,
        leave_text: &str,
    ) -> Result<(), Refused> {
        let left: i64 = self.command(|c| {
            self.scripts
                .leave
                .key(key(&format!("members:{id}")))
                .key(key(&format!("node:{}:members", self.node)))
                .arg(lower)
                .arg(owner)
                .arg(format!("{id}:{lower}"))
                .arg(leave_text)
                .arg(channel(id))
                .invoke(c)
        })?;
        if left == 1 {
            Ok(())
        } else {
            Err(Refused::NotMember)
        }
    }
}
