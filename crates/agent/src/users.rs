//! The user a process task runs as (`user: USER[:GROUP]`): names looked up
//! in the node's `/etc/passwd` and `/etc/group`, numbers taken as they
//! are, with the rules Docker applies inside an image: without a group,
//! the user's primary group and the groups that list the user; with one,
//! that group alone.

use std::path::Path;

/// The IDs a task's process gets before it runs its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one among them).
    pub groups: Vec<u32>,
}

/// One line of a passwd file: name, uid, gid.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((name, uid, gid))
    })
}

/// One line of a group file: name, gid, members.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .collect();
        Some((name, gid, members))
    })
}

/// The IDs of `user` (`USER[:GROUP]`) by the texts of a passwd and a group
/// file. A name that neither file has, or a bare uid without a passwd
/// entry (whose group would be a guess), is an error that says so.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|(_, u, _)| *u == uid),
        Err(_) => passwd_entries(passwd).find(|(n, _, _)| *n == user_part),
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some((_, uid, _))) => uid,
        (Err(_), None) => {
            return Err(format!(
                "user {user_part:?} is not in the node's /etc/passwd"
            ))
        }
    };
    match group_part {
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|(n, _, _)| *n == g)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| format!("group {g:?} is not in the node's /etc/group"))?,
            };
            Ok(Ids {
                uid,
                gid,
                groups: vec![gid],
            })
        }
        None => {
            let (name, _, gid) = entry.ok_or_else(|| {
                format!(
                    "user {user_part} is not in the node's /etc/passwd, so it has no group: give USER:GROUP"
                )
            })?;
            let mut groups = vec![gid];
            for (_, g, members) in group_entries(group) {
                if members.contains(&name) && !groups.contains(&g) {
                    groups.push(g);
                }
            }
            Ok(Ids { uid, gid, groups })
        }
    }
}

/// [`resolve`] against the node's own files (a missing one is empty).
pub fn resolve_on_node(user: &str) -> Result<Ids, String> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    resolve(user, &read("/etc/passwd"), &read("/etc/group"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwww-data:x:33:\napp:x:1000:\ndocker:x:999:app,other\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers_resolve_as_docker_does() {
        assert_eq!(
            resolve("app", PASSWD, GROUP).unwrap(),
            Ids {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 999]
            }
        );
        // A number with an entry has the entry's groups.
        assert_eq!(resolve("33", PASSWD, GROUP).unwrap().gid, 33);
        // A group given is the only one.
        assert_eq!(
            resolve("app:staff", PASSWD, GROUP).unwrap(),
            Ids {
                uid: 1000,
                gid: 50,
                groups: vec![50]
            }
        );
        assert_eq!(
            resolve("4242:4242", PASSWD, GROUP).unwrap(),
            Ids {
                uid: 4242,
                gid: 4242,
                groups: vec![4242]
            }
        );
    }

    #[test]
    fn what_the_node_lacks_is_an_error() {
        assert_eq!(
            resolve("nobody-here", PASSWD, GROUP).unwrap_err(),
            "user \"nobody-here\" is not in the node's /etc/passwd"
        );
        assert!(resolve("4242", PASSWD, GROUP)
            .unwrap_err()
            .ends_with("give USER:GROUP"));
        assert_eq!(
            resolve("app:nogroup", PASSWD, GROUP).unwrap_err(),
            "group \"nogroup\" is not in the node's /etc/group"
        );
    }
}
