import { VmsnapError } from '../../errors.js';

/**
 * The one edit vmsnap makes to libvirt domain XML: point a disk at another
 * image. libvirt writes this XML itself (dumpxml, save-image-dumpxml), so a
 * scan of its `<disk>` elements is enough; no XML library is needed.
 */

/** Escape for a single-quoted XML attribute, as libvirt quotes them. */
export function xmlAttr(value: string): string {
  return value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

function unescapeAttr(value: string): string {
  return value.replace(/&apos;/g, "'").replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

/** Start and end offsets of every `<disk ...>...</disk>` element (disks do not nest). */
function diskElements(xml: string): { start: number; end: number }[] {
  const found: { start: number; end: number }[] = [];
  const open = /<disk[\s>]/g;
  for (let m = open.exec(xml); m !== null; m = open.exec(xml)) {
    const close = xml.indexOf('</disk>', m.index);
    if (close < 0) break;
    found.push({ start: m.index, end: close + '</disk>'.length });
    open.lastIndex = close;
  }
  return found;
}

/** Remove every `<backingStore>` element (self-closing or nested) from a piece of XML. */
function dropBackingStores(xml: string): string {
  let out = xml;
  for (;;) {
    const start = out.search(/<backingStore[\s/>]/);
    if (start < 0) return out;
    const tagEnd = out.indexOf('>', start);
    if (out[tagEnd - 1] === '/') {
      out = cut(out, start, tagEnd + 1);
      continue;
    }
    // Nested: find the matching close tag by depth.
    let depth = 1;
    let i = tagEnd + 1;
    const tag = /<(\/?)backingStore([\s/>])/g;
    tag.lastIndex = i;
    for (let m = tag.exec(out); m !== null; m = tag.exec(out)) {
      const end = out.indexOf('>', m.index);
      if (m[1] === '/') depth--;
      else if (out[end - 1] !== '/') depth++;
      i = end + 1;
      if (depth === 0) break;
    }
    if (depth !== 0) throw new VmsnapError('internal', 'unbalanced <backingStore> in libvirt domain XML');
    out = cut(out, start, i);
  }
}

/** Cut [from, to) and the whitespace line it leaves. */
function cut(s: string, from: number, to: number): string {
  let a = from;
  while (a > 0 && (s[a - 1] === ' ' || s[a - 1] === '\t')) a--;
  let b = to;
  if (s[b] === '\n') b++;
  return s.slice(0, a) + s.slice(b);
}

function targetOf(disk: string): string | undefined {
  const m = /<target\s[^>]*dev=(['"])([^'"]*)\1/.exec(disk);
  return m?.[2];
}

/** The file each disk target points at in this XML (targets with no file source are left out). */
export function diskSources(xml: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const { start, end } of diskElements(xml)) {
    const disk = dropBackingStores(xml.slice(start, end));
    const target = targetOf(disk);
    const source = /<source\s[^>]*file=(['"])([^'"]*)\1/.exec(disk);
    if (target !== undefined && source?.[2] !== undefined) out.set(target, unescapeAttr(source[2]));
  }
  return out;
}

/**
 * The same XML with disk `target` reading from `file`: its source replaced and
 * its recorded backing chain dropped, so libvirt reads the chain from the image.
 */
export function setDiskSource(xml: string, target: string, file: string): string {
  const disk = diskElements(xml).find(({ start, end }) => targetOf(xml.slice(start, end)) === target);
  if (disk === undefined) throw new VmsnapError('conflict', `the libvirt domain XML has no disk with target ${target}`);
  const element = dropBackingStores(xml.slice(disk.start, disk.end));
  const source = /(<source\s[^>]*file=)(['"])[^'"]*\2/;
  if (!source.test(element)) throw new VmsnapError('conflict', `disk ${target} in the libvirt domain XML is not a file-backed disk; vmsnap snapshots file disks only`);
  const updated = element.replace(source, (_m, head: string) => `${head}'${xmlAttr(file)}'`);
  return xml.slice(0, disk.start) + updated + xml.slice(disk.end);
}
