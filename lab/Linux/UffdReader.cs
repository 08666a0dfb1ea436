using System.Runtime.InteropServices;
using Lab.Daemon;

namespace Lab.Linux;

/// <summary>
/// What a process's uffd reader hands its messages to (the daemon's process, which owns the
/// VM-facing handling: faults, fork, unmap, remap, remove).
/// </summary>
public unsafe interface IUffdEvents
{
    /// <summary>The process's pid, for the reader's log line.</summary>
    int Pid { get; }

    /// <summary>One message, handled in the order it was read.</summary>
    void Handle(ref Native.UffdMsg m);

    /// <summary>
    /// A REMOVE read aside by the drain: true when it is our agent's own (the eviction
    /// under way, counted as an event); it is then consumed and not handled.
    /// </summary>
    bool TakeOwnRemove(ulong start, ulong end);

    /// <summary>Resolve the held-back (throttled) faults that may go now.</summary>
    void ResolveDeferred();

    /// <summary>Faults are held back: the reader polls with a short timeout to resolve them in time.</summary>
    bool Deferring { get; }
}

/// <summary>
/// The thread that reads one process's uffd: reads a batch of messages and has them applied
/// under <see cref="Handling"/>; reads messages aside (<see cref="DrainEvents"/>) when an
/// install meets an unread event, and hands those over in order after the current fault.
/// </summary>
public sealed unsafe class UffdReader
{
    readonly UffdPmap Pmap;
    readonly IUffdEvents _events;
    readonly string _name;
    readonly Fd _stopFd;
    Thread? _thread;
    int _stopped;
    // Held while a batch of uffd messages is read and applied. The kernel releases a
    // program's munmap/mremap once its event is *read*; a control request that follows
    // takes this lock to know the event has also been *applied* (see Barrier).
    public readonly object Handling = new();

    public UffdReader(UffdPmap pmap, IUffdEvents events, string name)
    {
        Pmap = pmap; _events = events; _name = name;
        _stopFd = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        pmap.DrainEvents = DrainEvents;
    }

    public void Start()
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = $"uffd {_name}" };
        _thread.Start();
    }

    /// <summary>Stop the fault thread and wait for it; the caller then destroys the space.</summary>
    public void Stop()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        ulong one = 1;
        Native.Write(_stopFd, &one, 8);
        if (_thread != null && _thread != Thread.CurrentThread) _thread.Join();
        _stopFd.Dispose();
    }

    void Loop()
    {
        Pmap.ReaderThreadId = Environment.CurrentManagedThreadId;
        try { ReadEvents(); }
        catch (Exception e) { Log.Error($"uffd thread of pid {_events.Pid}: {e.GetType().Name}: {e.Message}"); }
        finally { NativeMemory.Free(_aside); }
    }

    void ReadEvents()
    {
        const int Batch = 16;
        var msgs = (Native.UffdMsg*)NativeMemory.Alloc((nuint)(Batch * sizeof(Native.UffdMsg)));
        var fds = stackalloc Native.PollFd[2];
        try
        {
            while (true)
            {
                int rc;
                using (var uffd = Pmap.Uffd.Use())
                using (var stop = _stopFd.Use())
                {
                    fds[0] = new Native.PollFd { Fd = uffd.Number, Events = Native.POLLIN };
                    fds[1] = new Native.PollFd { Fd = stop.Number, Events = Native.POLLIN };
                    rc = Native.Poll(fds, 2, PollTimeout);
                }
                if (rc < 0) { if (Errno.Last == Errno.EINTR) continue; break; }
                if (fds[1].Revents != 0) break;
                if ((fds[0].Revents & (Native.POLLERR | Native.POLLNVAL)) != 0) break;
                if (rc == 0)
                {
                    lock (Handling) { HandleSetAside(); Settle(); }
                    continue;
                }
                lock (Handling)
                {
                    nint n = Native.Read(Pmap.Uffd, msgs, (nuint)(Batch * sizeof(Native.UffdMsg)));
                    if (n < 0)
                    {
                        int e = Errno.Last;
                        if (e is Errno.EAGAIN or Errno.EINTR) continue;
                        break;
                    }
                    int count = (int)(n / sizeof(Native.UffdMsg));
                    for (int i = 0; i < count; i++) _events.Handle(ref msgs[i]);
                    HandleSetAside();   // read after this batch, so handled after it
                    Settle();
                }
            }
        }
        finally { NativeMemory.Free(msgs); }
    }

    // Messages read by DrainEvents while a fault was being installed, handled in order after it.
    const int AsideCapacity = 1024;
    readonly Native.UffdMsg* _aside = (Native.UffdMsg*)NativeMemory.Alloc((nuint)(AsideCapacity * sizeof(Native.UffdMsg)));
    int _asideHead, _asideCount;

    /// <summary>
    /// Reader thread, inside an install that got EAGAIN: an event is waiting behind the
    /// pending faults. Read messages aside until it has been read (or none are left), so the
    /// install can go through; they are handled, in order, once the current fault is done.
    /// Our agent's own REMOVE needs nothing from the model and is consumed here.
    /// </summary>
    void DrainEvents()
    {
        while (_asideCount < AsideCapacity)
        {
            Native.UffdMsg m;
            nint n = Native.Read(Pmap.Uffd, &m, (nuint)sizeof(Native.UffdMsg));
            if (n != sizeof(Native.UffdMsg)) return;   // EAGAIN: nothing more to read
            if (m.Event == Native.UFFD_EVENT_REMOVE && _events.TakeOwnRemove(m.Arg0, m.Arg1))
                return;
            _aside[(_asideHead + _asideCount) % AsideCapacity] = m;
            _asideCount++;
            if (m.Event != Native.UFFD_EVENT_PAGEFAULT) return;
        }
    }

    /// <summary>Hand over the messages read aside, in order. Caller holds <see cref="Handling"/>.</summary>
    public void HandleSetAside()
    {
        System.Diagnostics.Debug.Assert(Monitor.IsEntered(Handling), "caller holds Handling");
        while (_asideCount > 0)
        {
            var m = _aside[_asideHead];
            _asideHead = (_asideHead + 1) % AsideCapacity;
            _asideCount--;
            _events.Handle(ref m);
        }
    }

    /// <summary>Poll timeout: none while messages wait aside, short while faults are held back.</summary>
    int PollTimeout => _asideCount > 0 ? 0 : _events.Deferring ? 1 : -1;

    /// <summary>Resolve held-back faults that may go, and handle whatever that read aside.</summary>
    void Settle()
    {
        _events.ResolveDeferred();
        HandleSetAside();
    }

    /// <summary>
    /// Faults in [addr, addr+len) read aside are dropped (the range left this uffd, whose
    /// unregister woke their threads); the rest stay, in order. Caller holds <see cref="Handling"/>.
    /// </summary>
    public void DropAsideFaults(ulong addr, ulong len)
    {
        System.Diagnostics.Debug.Assert(Monitor.IsEntered(Handling), "caller holds Handling");
        int kept = 0;
        for (int i = 0, n = _asideCount; i < n; i++)
        {
            var msg = _aside[(_asideHead + i) % AsideCapacity];
            if (msg.Event == Native.UFFD_EVENT_PAGEFAULT && msg.Arg1 >= addr && msg.Arg1 - addr < len) continue;
            _aside[(_asideHead + kept++) % AsideCapacity] = msg;
        }
        _asideCount = kept;
    }
}
