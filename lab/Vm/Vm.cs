namespace Lab.Vm;

/// <summary>
/// The machine-independent VM of one daemon: the vnode object table, object ids and
/// the address spaces it created. There is no global lock on the fault path: the
/// vnode table lock is taken only when a vnode object is created or loses its last
/// reference.
/// </summary>
public sealed class Vm
{
    /// <summary>The only page size the lab supports (x86-64 base pages).</summary>
    public const int PageSize = 4096;
    internal const int PageShift = 12;

    readonly Dictionary<ulong, VmObject> vnodeObjects = new();
    long nextId;
    int objectsAlive;
    long anonsAlive;

    /// <summary>Tests: the next this-many page allocations for anons fail (a RAM shortage; UVM designs wait and restart).</summary>
    internal int FailPageAllocs;

    /// <summary>The vnode object of <paramref name="vnode"/>, created on first use (with no reference).</summary>
    public VmObject VnodeObject(IVnode vnode)
    {
        ArgumentNullException.ThrowIfNull(vnode);
        lock (vnodeObjects) return VnodeObjectLocked(vnode);
    }

    VmObject VnodeObjectLocked(IVnode vnode)
    {
        if (!vnodeObjects.TryGetValue(vnode.Ino, out var o))
        {
            o = new VmObject(Interlocked.Increment(ref nextId), VmObjectKind.Vnode, 0, vnode);
            vnodeObjects.Add(vnode.Ino, o);
        }
        return o;
    }

    public AddressSpace CreateSpace(IPmap pmap, IResolver resolver)
    {
        ArgumentNullException.ThrowIfNull(pmap);
        ArgumentNullException.ThrowIfNull(resolver);
        if (pmap.PageSize != PageSize)
            throw new ArgumentException($"pmap page size {pmap.PageSize}, the VM supports {PageSize}", nameof(pmap));
        return new AddressSpace(this, pmap, resolver);
    }

    /// <summary>Objects with at least one reference (entries, shadows, faults in progress).</summary>
    public int ObjectsAlive => Volatile.Read(ref objectsAlive);

    /// <summary>UVM anons with at least one reference (amap slots, faults in progress).</summary>
    public long AnonsAlive => Interlocked.Read(ref anonsAlive);

    internal void AnonAllocated() => Interlocked.Increment(ref anonsAlive);
    internal void AnonFreed() => Interlocked.Decrement(ref anonsAlive);

    /// <summary>A new anonymous (OBJT_DEFAULT) object with one reference.</summary>
    internal VmObject AllocateAnonymous(long sizePages)
    {
        var o = new VmObject(Interlocked.Increment(ref nextId), VmObjectKind.Anonymous, sizePages, null);
        o.ref_count = 1;
        Interlocked.Increment(ref objectsAlive);
        return o;
    }

    /// <summary>The vnode object of <paramref name="vnode"/> with one more reference.</summary>
    internal VmObject ReferenceVnode(IVnode vnode)
    {
        lock (vnodeObjects)
        {
            var o = VnodeObjectLocked(vnode);
            Reference(o);
            return o;
        }
    }

    /// <summary>vm_object_reference. The caller holds a reference already, or the vnode table lock.</summary>
    internal void Reference(VmObject o)
    {
        lock (o.Lock)
        {
            if (o.dead) throw new InvalidOperationException($"reference to dead {o}");
            if (o.ref_count++ == 0) Interlocked.Increment(ref objectsAlive);
        }
    }

    /// <summary>
    /// vm_object_deallocate: drop one reference; an object that loses its last one is
    /// terminated and releases its backing object in turn. (Collapse of a backing
    /// object left with a single shadow is a later issue.)
    /// </summary>
    internal void Deallocate(VmObject? o)
    {
        while (o != null)
        {
            VmObject? next;
            lock (o.Lock)
            {
                if (o.ref_count <= 0) throw new InvalidOperationException($"deallocate of unreferenced {o}");
                if (--o.ref_count > 0) return;
                Interlocked.Decrement(ref objectsAlive);
                if (o.Kind == VmObjectKind.Vnode) break;
                o.dead = true;
                next = o.backing_object;
                o.backing_object = null;
                o.pages.Clear();
                o.WakeupBusy();   // nobody should sleep here (a busy page's owner holds a reference), but never strand one
            }
            if (next != null)
                lock (next.Lock) next.shadow_count--;
            o = next;
        }
        if (o is { Kind: VmObjectKind.Vnode, Vnode: { } vn })
        {
            // Re-check under the table lock: MapFile may have revived it meanwhile.
            lock (vnodeObjects)
                lock (o.Lock)
                    if (o.ref_count == 0 && vnodeObjects.TryGetValue(vn.Ino, out var cur) && cur == o)
                    {
                        vnodeObjects.Remove(vn.Ino);
                        o.dead = true;
                    }
        }
    }

    /// <summary>
    /// vm_object_shadow as called by vm_map_lookup for a needs_copy entry: put a new
    /// anonymous object in front of the entry's object. Not done when the object is
    /// anonymous and this entry holds its only reference (nobody else can see it).
    /// Caller holds the entry's map lock. Returns whether a shadow was made.
    /// </summary>
    internal bool Shadow(VmMapEntry entry)
    {
        var source = entry.Object!;
        lock (source.Lock)
        {
            if (source.Kind == VmObjectKind.Anonymous && source.ref_count == 1)
            {
                entry.needs_copy = false;
                return false;
            }
        }
        var shadow = AllocateAnonymous(entry.Pages);
        shadow.backing_object = source;            // inherits the entry's reference on source
        shadow.backing_object_offset = entry.Offset;
        lock (source.Lock) source.shadow_count++;
        entry.Object = shadow;
        entry.Offset = 0;
        entry.needs_copy = false;
        return true;
    }
}
