namespace Lab.Vm.Uvm;

/// <summary>Marks a resolver whose spaces use the UVM map layer (amap over uobj) instead of object chains.</summary>
internal interface IAmapDesign;
