import type { CSSProperties, ReactNode } from 'react';

const HUES = [210, 260, 330, 20, 150, 190, 45, 290];

function hueOf(seed: string): number {
  let hash = 0;
  for (const ch of seed) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return HUES[hash % HUES.length]!;
}

function initials(name: string): string {
  const words = name.trim().split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0]![0]! + words[1]![0]! : name.slice(0, 2);
  return letters.toUpperCase();
}

interface AvatarProps {
  name: string;
  /** Stable color seed (an id), so renaming a group keeps its color. */
  seed?: string;
  size?: 'sm' | 'md';
  /** Drawn over the bottom-right corner (a presence dot). */
  badge?: ReactNode;
}

/** Initials on a color derived from the seed. Decorative: the name is always shown next to it. */
export function Avatar({ name, seed, size = 'md', badge }: AvatarProps) {
  return (
    <span className={`avatar avatar-${size}`} style={{ '--avatar-hue': hueOf(seed ?? name) } as CSSProperties}>
      <span aria-hidden="true">{initials(name)}</span>
      {badge ? <span className="avatar-badge">{badge}</span> : null}
    </span>
  );
}
