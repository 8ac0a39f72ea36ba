//! `service logs`: the output of a service's tasks.

use super::*;

/// The query is part of the contract, in the API model.
pub(super) type LogQuery = flotilla_api::model::LogsQuery;

/// Last `n` lines of `bytes`.
pub(super) fn tail_lines(bytes: &[u8], n: u64) -> &[u8] {
    let mut count = 0;
    let end = if bytes.ends_with(b"\n") {
        bytes.len() - 1
    } else {
        bytes.len()
    };
    for i in (0..end).rev() {
        if bytes[i] == b'\n' {
            count += 1;
            if count == n {
                return &bytes[i + 1..];
            }
        }
    }
    if n == 0 {
        return &[];
    }
    bytes
}

pub(super) struct LogSource {
    prefix: String,
    path: PathBuf,
    offset: u64,
}

pub(super) fn prefix_lines(prefix: &str, chunk: &[u8], partial: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    partial.extend_from_slice(chunk);
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&partial[..=pos]);
        partial.drain(..=pos);
    }
    out
}

pub(super) async fn logs(
    State(ctx): Ctx,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let service_id =
        read(&m, |s| s.service(&name).map(|svc| svc.id.clone())).ok_or_else(|| not_found(&name))?;
    let agent_dir = ctx.agent_dir();
    let sources = {
        let m = m.clone();
        let service_id = service_id.clone();
        let agent_dir = agent_dir.clone();
        move || -> Vec<LogSource> {
            read(&m, |s| {
                let mut tasks: Vec<_> = s.tasks_of(&service_id).collect();
                tasks.sort_by_key(|t| (t.created_index, t.id.clone()));
                tasks
                    .into_iter()
                    .map(|t| {
                        let node = t
                            .node_id
                            .as_ref()
                            .and_then(|id| s.nodes.get(id))
                            .map(|n| n.name.clone())
                            .unwrap_or_default();
                        let short: String = t.id.chars().take(12).collect();
                        let slot = if t.slot > 0 {
                            t.slot.to_string()
                        } else {
                            t.node_id.clone().unwrap_or_default()
                        };
                        LogSource {
                            prefix: format!("{}.{}.{}@{} | ", t.service_name, slot, short, node),
                            path: flotilla_agent::task_log_path(&agent_dir, &t.id),
                            offset: 0,
                        }
                    })
                    .collect()
            })
        }
    };
    let mut initial = Vec::new();
    let mut tracked: BTreeMap<PathBuf, (LogSource, Vec<u8>)> = BTreeMap::new();
    for mut src in sources() {
        let bytes = std::fs::read(&src.path).unwrap_or_default();
        src.offset = bytes.len() as u64;
        let shown = match q.tail {
            Some(n) => tail_lines(&bytes, n),
            None => &bytes[..],
        };
        let mut partial = Vec::new();
        initial.extend(prefix_lines(&src.prefix, shown, &mut partial));
        if !partial.is_empty() {
            initial.extend_from_slice(src.prefix.as_bytes());
            initial.extend_from_slice(&partial);
            initial.push(b'\n');
        }
        tracked.insert(src.path.clone(), (src, Vec::new()));
    }
    if !q.follow {
        return Ok(Body::from(initial).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        if tx.send(Ok(initial)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            for src in sources() {
                tracked.entry(src.path.clone()).or_insert((src, Vec::new()));
            }
            let mut out = Vec::new();
            for (src, partial) in tracked.values_mut() {
                let Ok(mut f) = std::fs::File::open(&src.path) else {
                    continue;
                };
                let len = f.metadata().map(|md| md.len()).unwrap_or(0);
                if len < src.offset {
                    // The log was truncated by the size cap: start over.
                    src.offset = 0;
                }
                if len == src.offset || f.seek(SeekFrom::Start(src.offset)).is_err() {
                    continue;
                }
                let mut chunk = Vec::new();
                if f.take(1 << 20).read_to_end(&mut chunk).is_ok() {
                    src.offset += chunk.len() as u64;
                    out.extend(prefix_lines(&src.prefix, &chunk, partial));
                }
            }
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Body::from_stream(stream).into_response())
}
