import { useEffect, useLayoutEffect, useRef, useState, type ReactNode } from 'react';

interface PopoverProps {
  /** The control that opened it: placed next to it, and focused again when it closes. */
  anchor: HTMLElement;
  onClose: () => void;
  label: string;
  role?: 'dialog' | 'menu';
  children: ReactNode;
}

const GAP_PX = 6;
const MARGIN_PX = 8;

/**
 * A floating panel next to its anchor, in fixed position so a scrolling list cannot clip
 * it: below the anchor if it fits, else above; kept inside the viewport. Escape and a press
 * outside close it; closing gives the focus back to the anchor.
 */
export function Popover({ anchor, onClose, label, role = 'dialog', children }: PopoverProps) {
  const ref = useRef<HTMLDivElement>(null);
  const [position, setPosition] = useState<{ top: number; left: number } | null>(null);
  const onCloseRef = useRef(onClose);
  useEffect(() => {
    onCloseRef.current = onClose;
  }, [onClose]);

  useLayoutEffect(() => {
    const panel = ref.current;
    if (!panel) return;
    const a = anchor.getBoundingClientRect();
    const p = panel.getBoundingClientRect();
    const below = a.bottom + GAP_PX;
    const top = below + p.height <= window.innerHeight - MARGIN_PX ? below : Math.max(MARGIN_PX, a.top - GAP_PX - p.height);
    const left = Math.min(Math.max(MARGIN_PX, a.right - p.width), window.innerWidth - p.width - MARGIN_PX);
    setPosition({ top, left });
  }, [anchor]);

  useEffect(() => {
    const onPointer = (event: PointerEvent) => {
      const target = event.target as Node;
      if (!ref.current?.contains(target) && !anchor.contains(target)) onCloseRef.current();
    };
    // Escape closes this panel only, not a dialog it sits in.
    const panel = ref.current;
    const onKey = (event: KeyboardEvent) => {
      if (event.key !== 'Escape') return;
      event.stopPropagation();
      event.preventDefault();
      onCloseRef.current();
    };
    document.addEventListener('pointerdown', onPointer, true);
    panel?.addEventListener('keydown', onKey);
    return () => {
      document.removeEventListener('pointerdown', onPointer, true);
      panel?.removeEventListener('keydown', onKey);
      if (anchor.isConnected) anchor.focus({ preventScroll: true });
    };
  }, [anchor]);

  return (
    <div
      ref={ref}
      className="popover"
      role={role}
      aria-label={label}
      // Measured before it is placed: transparent, not hidden, so what it holds can take the focus.
      style={position ? { top: position.top, left: position.left } : { top: 0, left: 0, opacity: 0 }}
    >
      {children}
    </div>
  );
}
