//! Worker threads, each running its own single-threaded tokio runtime. A connection stays
//! on the worker that accepted it, with its upstream connections, so a request never hops
//! threads and no task is stolen: one `current_thread` runtime per core is what the fastest
//! tokio servers run (a work-stealing runtime with one worker pays for stealing it never
//! does). The daemon's own runtime keeps the control plane: admin, reloads, the kernel maps.
use std::{future::Future, thread::JoinHandle};

use anyhow::Context as _;
use tokio::{runtime::Handle, sync::oneshot, task::AbortHandle};

pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers named `<name>-<i>`.
    pub fn start(count: usize, name: &str) -> anyhow::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("creating a worker runtime")?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })
                .context("starting a worker thread")?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task(i)` on every worker `i`; the tasks end when the returned guard drops.
    pub fn spawn_each<F, Fut>(&self, task: F) -> OnEveryWorker
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        OnEveryWorker(
            self.handles
                .iter()
                .enumerate()
                .map(|(i, handle)| handle.spawn(task(i)).abort_handle())
                .collect(),
        )
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Tasks running on every worker, aborted when dropped.
pub struct OnEveryWorker(Vec<AbortHandle>);

impl Drop for OnEveryWorker {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
