// A clock that moves only when a test says so. Timers fire in due order, ties in the
// order they were set, like the browser's.

import type { Clock } from '../lib/sync/engine.ts';

interface Task {
  id: number;
  due: number;
  fn: () => void;
}

export class FakeClock implements Clock {
  private time = 1_700_000_000_000;
  private nextId = 1;
  private tasks: Task[] = [];

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const task = { id: this.nextId++, due: this.time + Math.max(0, ms), fn };
    this.tasks.push(task);
    return task.id;
  }

  clearTimeout(handle: unknown): void {
    this.tasks = this.tasks.filter((task) => task.id !== handle);
  }

  get pendingTimers(): number {
    return this.tasks.length;
  }

  /** Moves time forward by `ms`, running every timer that falls due on the way. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      const due = this.tasks
        .filter((task) => task.due <= end)
        .sort((a, b) => a.due - b.due || a.id - b.id)[0];
      if (!due) break;
      this.tasks = this.tasks.filter((task) => task !== due);
      this.time = due.due;
      due.fn();
    }
    this.time = end;
  }
}
