//! The parent side of a Python worker: `N` Python child processes (`--processes N`), each
//! running one call at a time, so that CPU-bound Python runs on `N` cores whatever the GIL.
//! Calls reach a child over its stdin and come back over its stdout ([`super::frames`]).
//!
//! A call whose future is dropped (a time limit, a force cancel) kills its child, the only
//! way to stop Python code from outside; a child that dies (killed, crashed) fails its call
//! with a retryable `rask.WorkerLost` error. Either way a fresh child replaces it at the next
//! call. Children run in their own process group, so that a terminal's Ctrl-C reaches only
//! the worker, which lets running calls finish; they exit when their stdin closes (the worker
//! exiting, even killed).

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use rask_worker::ForeignError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::frames;

/// How to start a child: the program and its arguments (the modules to import and whether it
/// runs pickled functions are among them).
#[derive(Debug, Clone)]
pub(crate) struct ChildCommand {
    /// The program (the Python interpreter) and its arguments.
    pub(crate) argv: Vec<String>,
}

/// One child process, idle or running a call.
struct Process {
    /// Killed when dropped.
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The child processes of a worker. Cheap to share (`Arc`).
pub(crate) struct Processes {
    command: ChildCommand,
    /// The children not running a call.
    idle: Mutex<Vec<Process>>,
    /// One permit per child: calls beyond wait.
    slots: Semaphore,
}

/// Why a child failed a call or could not start.
#[derive(Debug)]
pub(crate) struct Lost(pub(crate) String);

impl Processes {
    /// `n` children started with `command`, each ready (its modules imported).
    ///
    /// # Errors
    /// [`Lost`] if a child cannot start or exits before it is ready (a module that does not
    /// import: its traceback is on the worker's stderr).
    pub(crate) async fn start(command: ChildCommand, n: usize) -> Result<Arc<Self>, Lost> {
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            idle.push(spawn(&command).await?);
        }
        Ok(Arc::new(Processes {
            command,
            idle: Mutex::new(idle),
            slots: Semaphore::new(n),
        }))
    }

    /// Runs `name` with `args` on an idle child (waiting for one).
    pub(crate) async fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, ForeignError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| lost(name, "the worker is stopping"))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut process = match idle {
            Some(process) => process,
            None => spawn(&self.command).await.map_err(|e| lost(name, &e.0))?,
        };
        // Dropped with `process` if this future is dropped mid-call: the child is killed.
        match exchange(&mut process, &frames::call(name, args)).await {
            Ok(body) => {
                let reply = frames::read_reply(body);
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(process);
                reply.map_err(|bad| lost(name, &format!("it replied with {}", bad.0)))?
            }
            Err(e) => {
                let status = match process.child.try_wait() {
                    Ok(Some(status)) => format!("it exited ({status})"),
                    _ => format!("its pipe failed ({e})"),
                };
                Err(lost(name, &status))
            }
        }
    }
}

/// A retryable `rask.WorkerLost` error of a call of `name`.
fn lost(name: &str, why: &str) -> ForeignError {
    ForeignError {
        retryable: true,
        ..ForeignError::new(
            "rask.WorkerLost",
            format!("the Python process running {name} was lost: {why}"),
        )
    }
}

/// Writes `frame` to the child, then reads its reply's body.
async fn exchange(process: &mut Process, frame: &[u8]) -> std::io::Result<Vec<u8>> {
    process.stdin.write_all(frame).await?;
    process.stdin.flush().await?;
    let len = process.stdout.read_u32_le().await?;
    let mut body = vec![0; len as usize];
    process.stdout.read_exact(&mut body).await?;
    Ok(body)
}

/// Starts a child and waits until it is ready.
async fn spawn(command: &ChildCommand) -> Result<Process, Lost> {
    let (program, args) = command
        .argv
        .split_first()
        .ok_or_else(|| Lost("no command to start Python children with".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Lost(format!("cannot start {program}: {e}")))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Lost("a child without pipes".into()));
    };
    let mut stdout = BufReader::new(stdout);
    match stdout.read_u8().await {
        Ok(frames::READY) => Ok(Process {
            child,
            stdin,
            stdout,
        }),
        Ok(other) => Err(Lost(format!(
            "a Python child process wrote {other:#x} instead of being ready"
        ))),
        Err(_) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            Err(Lost(format!(
                "a Python child process exited before it was ready ({status}): see its \
                 traceback above"
            )))
        }
    }
}
